"""Fixtures shared across test modules: where the data is, and a real local endpoint process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from local_servers import free_port, stop_process

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
DOGS = SHARED / "data" / "dogs"
SAMPLES = SHARED / "data" / "samples"
DEFAULT_MODEL = PROJECT / "models" / "default"


def wait_for_ping(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"endpoint exited with {process.returncode} before answering /ping")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url}/ping did not answer 200 within {timeout}s")


class EndpointProcess:
    """`python -m serving.server` running as a real process on a free loopback port."""

    def __init__(self, model_dir: Path, *extra_args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--model-dir", str(model_dir), "--port", str(self.port)]
            + list(extra_args),
            cwd=PROJECT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self) -> EndpointProcess:
        wait_for_ping(self.url, self.process)
        return self

    def stop(self) -> int:
        return stop_process(self.process, timeout=30)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def dogs() -> Path:
    return DOGS


@pytest.fixture(scope="session")
def labrador(samples) -> bytes:
    """A real-world photo of one of the 120 breeds."""
    return (samples / "Labrador_retriever_06455.jpg").read_bytes()


@pytest.fixture(scope="session")
def spaniel(samples) -> bytes:
    """A real-world photo of a breed that is not among the 120."""
    return (samples / "American_water_spaniel_00648.jpg").read_bytes()


@pytest.fixture(scope="session")
def endpoint():
    """The committed default model served by a real `serving.server` process, shared by the whole session."""
    running = EndpointProcess(DEFAULT_MODEL).wait_ready()
    yield running
    running.stop()


@pytest.fixture
def runtime_env(endpoint, monkeypatch):
    """Point boto3's sagemaker-runtime client at the local endpoint, as the `local` stage does."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", endpoint.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return endpoint
