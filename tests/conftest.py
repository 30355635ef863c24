"""Fixtures and helpers shared across test modules: where the data is, a real local endpoint process, the API
through chalice's test client and `chalice local`, a file server for requests by URL, and moto_server for the
job launchers."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from chalice.test import Client
from jobs_on_moto import REGION, ROLE, is_loopback, isolate_aws_env, uploaded_model
from local_servers import free_port, serving_in_thread, stop_process
from moto_server import MotoServer

import app as api
from chalicelib.invoke import runtime_client
from chalicelib.queued import s3_client
from chalicelib.settings import get_settings

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
DOGS = SHARED / "data" / "dogs"
SAMPLES = SHARED / "data" / "samples"
DEFAULT_MODEL = PROJECT / "models" / "default"
CHALICE = str(Path(sys.executable).parent / "chalice")
LABRADOR = "Labrador_retriever_06455.jpg"  # a real-world photo of one of the 120 breeds
SPANIEL = "American_water_spaniel_00648.jpg"  # a real-world photo of a breed that is not among the 120
# What the Lambda of a stage serving the committed default model resizes to (its MODEL_RESIZE_SIZE).
DEFAULT_MODEL_RESIZE_SIZE = json.loads((DEFAULT_MODEL / "config.json").read_text())["preprocessing"][
    "resize_size"
]


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
    return (samples / LABRADOR).read_bytes()


@pytest.fixture(scope="session")
def spaniel(samples) -> bytes:
    return (samples / SPANIEL).read_bytes()


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


def write_stage_project(directory: Path, **local_env: str) -> Path:
    """`directory` with the real .chalice/config.json, the `local` stage's environment updated with
    `local_env` (chalice reads the stage environment from the config and lets it win over the process's)."""
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    config["stages"]["local"]["environment_variables"].update(local_env)
    (directory / ".chalice").mkdir(parents=True, exist_ok=True)
    (directory / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture
def new_container():
    """A fresh Lambda container: settings and the boto3 clients are made again on first use."""
    for cached in (get_settings, runtime_client, s3_client):
        cached.cache_clear()
    yield
    for cached in (get_settings, runtime_client, s3_client):
        cached.cache_clear()


@pytest.fixture(scope="module")
def local_project(endpoint, tmp_path_factory) -> Path:
    """A project whose `local` stage calls the session's endpoint."""
    return write_stage_project(
        tmp_path_factory.mktemp("local"), AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=endpoint.url
    )


@pytest.fixture
def client(runtime_env, local_project) -> Client:
    """The `local` stage in-process (chalice's test client), calling the session's real endpoint process."""
    return Client(api.app, stage_name="local", project_dir=str(local_project))


class ChaliceLocal:
    """`chalice local --stage local` serving a copy of app.py and chalicelib whose local stage calls the
    endpoint at `endpoint_url`, with `local_env` over the rest of that stage's environment; its output goes
    to `log`."""

    def __init__(self, project: Path, endpoint_url: str, **local_env: str):
        write_stage_project(project, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=endpoint_url, **local_env)
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


class SampleFiles(http.server.SimpleHTTPRequestHandler):
    """The files of a folder, plus /redirect?to=URL; quiet."""

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def async_stage(project_dir: Path) -> Iterator[SimpleNamespace]:
    """A real `chalice local` as an asynchronous stage whose S3 and SageMaker runtime are a real moto_server,
    with moto_server.AsyncOutputs answering SageMaker's result locations: yields (api, outputs, s3), where
    photos are queued under s3://queued-photos/in/."""
    from moto_server import AsyncOutputs

    moto = MotoServer().wait_ready()
    outputs = AsyncOutputs(moto.url, "s3://queued-photos/out", "s3://queued-photos/out-failures")
    api = None
    try:
        # A session of its own: boto3's default one would carry these settings into later tests.
        s3 = boto3.session.Session(
            region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        ).client("s3", endpoint_url=moto.url)
        s3.create_bucket(Bucket="queued-photos")
        api = ChaliceLocal(
            project_dir,
            outputs.url,
            ENDPOINT_NAME="dogbreeds-async",
            ENDPOINT_KIND="async",
            ASYNC_INPUT_S3="s3://queued-photos/in/",
            ASYNC_OUTPUT_S3=outputs.output,
            ASYNC_FAILURE_S3=outputs.failure,
            AWS_ENDPOINT_URL=moto.url,
            UNSIGNED_ENDPOINT_REQUESTS="false",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
        ).wait_ready()
        yield SimpleNamespace(api=api, outputs=outputs, s3=s3)
    finally:
        if api is not None:
            api.stop()
        outputs.stop()
        moto.stop()


def file_server(directory: Path, handler: type[SampleFiles] = SampleFiles) -> AbstractContextManager[str]:
    """`directory` served by `handler` on a loopback port, for requests by URL; yields its base URL."""
    bound = partial(handler, directory=str(directory))
    return serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), bound))


@pytest.fixture(scope="session")
def sample_files(samples) -> Iterator[str]:
    """The sample photos on a loopback file server, for requests by URL."""
    with file_server(samples) as url:
        yield url


@pytest.fixture(scope="session")
def api_stack(endpoint, tmp_path_factory):
    """The whole local service as `make run` starts it: the endpoint process with the default model and
    `chalice local --stage local` in front of it, shared by the session."""
    api = ChaliceLocal(tmp_path_factory.mktemp("chalice-local"), endpoint.url).wait_ready()
    yield api
    api.stop()


# --- a real browser ---

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
INSTALL_HINT = "run `make test` as root (it installs them), or `apt-get install chromium chromium-driver`"


def browser_paths() -> tuple[str, str]:
    """Where chromium and chromedriver are; fails the test, saying how to install them, when they are not."""
    found = {name: shutil.which(name) for name in (CHROMIUM, CHROMEDRIVER)}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"the browser tests need {' and '.join(missing)}: {INSTALL_HINT}")
    return found[CHROMIUM], found[CHROMEDRIVER]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, driven through Debian's chromedriver."""
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()


# --- AWS for the job launchers: moto_server, and a guard against leaving loopback ---


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().wait_ready()
    yield server
    server.stop()


@pytest.fixture
def aws(moto, monkeypatch, tmp_path) -> SimpleNamespace:
    """Environment pointing boto3 at moto_server, a fresh bucket, and boto3 clients to check results with."""
    isolate_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    bucket = f"dogbreeds-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("SAGEMAKER_BUCKET", bucket)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return SimpleNamespace(
        bucket=bucket,
        s3=s3,
        sagemaker=boto3.client("sagemaker", region_name=REGION),
        autoscaling=boto3.client("application-autoscaling", region_name=REGION),
    )


@pytest.fixture
def trained_model(aws) -> str:
    """A training job's model.tar.gz (the committed default model) in the bucket; returns its S3 URI."""
    return uploaded_model(aws, DEFAULT_MODEL, "dogbreeds-train-1")


@pytest.fixture
def connections(monkeypatch) -> Iterator[list[tuple]]:
    """Every socket connection made in this process. One to (or a lookup of) anything but loopback is refused
    and fails the test, even where botocore turns the refusal into an error the command reports."""
    made: list[tuple] = []
    outside: list[str] = []
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def refuse(what: str) -> None:
        outside.append(what)
        raise ConnectionRefusedError(f"test forbids leaving loopback: {what}")

    def check(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            if not is_loopback(address[0]):
                refuse(f"connect {address}")
            made.append(address[:2])

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        # Resolving a public name would already leak the request (DNS).
        if not is_loopback(host):
            refuse(f"lookup {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield made
    assert outside == [], f"attempted to leave loopback: {outside}"
