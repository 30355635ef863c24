"""Fixtures shared across test modules: where the data is, and a real local endpoint process."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from local_servers import free_port, serving_in_thread, stop_process

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
DOGS = SHARED / "data" / "dogs"
SAMPLES = SHARED / "data" / "samples"
DEFAULT_MODEL = PROJECT / "models" / "default"
CHALICE = str(Path(sys.executable).parent / "chalice")


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
    """`python -m serving.server` running as a real process on a free loopback port; its output goes to `log`
    when given (one line per request: see serving.server.RequestLog)."""

    def __init__(self, model_dir: Path, *extra_args: str, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("wb") if log is not None else contextlib.nullcontext() as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving.server",
                    "--model-dir",
                    str(model_dir),
                    "--port",
                    str(self.port),
                ]
                + list(extra_args),
                cwd=PROJECT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
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
    # No load shedding: on CPUs shared with the rest of the suite every request must still be answered,
    # however slowly; shedding has its own tests, with endpoints of their own.
    running = EndpointProcess(DEFAULT_MODEL, "--max-wait", "0").wait_ready()
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


class ChaliceLocal:
    """`chalice local --stage local` serving a copy of app.py and chalicelib whose local stage calls the
    endpoint at `endpoint_url`, with `local_env` over the rest of that stage's environment; its output goes
    to `log`."""

    def __init__(self, project: Path, endpoint_url: str, **local_env: str):
        self.write_config(project, endpoint_url, **local_env)
        shutil.copytree(
            PROJECT / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(PROJECT / "app.py", project / "app.py")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = project / "chalice.log"
        # As on a fresh machine running `make run`: no AWS region, credentials or endpoint set.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [CHALICE, "local", "--stage", "local", "--port", str(self.port), "--no-autoreload"],
                cwd=project,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @staticmethod
    def write_config(project: Path, endpoint_url: str, **local_env: str) -> None:
        """The real .chalice/config.json in `project`, its local stage calling the endpoint at `endpoint_url`
        (the stage's environment wins over the process's)."""
        config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
        stage_env = config["stages"]["local"]["environment_variables"]
        stage_env.update(AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=endpoint_url, **local_env)
        (project / ".chalice").mkdir(parents=True)
        (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))

    def wait_ready(self, timeout: float = 60.0) -> ChaliceLocal:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers; /health says 503 while its endpoint cannot answer
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chalice local did not start: {self.log.read_text()}") from None
                time.sleep(0.3)

    def stop(self) -> int:
        return stop_process(self.process, timeout=30)


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def sample_files(samples):
    """The sample photos on a loopback file server, for requests by URL."""
    handler = functools.partial(QuietFiles, directory=str(samples))
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url


@pytest.fixture(scope="session")
def api_stack(endpoint, tmp_path_factory):
    """The whole local service as `make run` starts it: the endpoint process with the default model and
    `chalice local --stage local` in front of it, shared by the session."""
    api = ChaliceLocal(tmp_path_factory.mktemp("chalice-local"), endpoint.url).wait_ready()
    yield api
    api.stop()
