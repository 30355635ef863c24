"""`make run` serves the API with the served model's resize size and calls the endpoint on the port it
started it on (scripts/local_stage.py), through a real `chalice local` process; scripts/run_local.sh moves
its three ports with environment variables."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import CHALICE, PROJECT, SAMPLES
from local_servers import free_port, stop_process

RUN_LOCAL = PROJECT / "scripts" / "run_local.sh"


def local_project(model_dir: Path, scratch: Path, *options: str) -> Path:
    printed = subprocess.run(
        [sys.executable, "-m", "scripts.local_stage", str(model_dir), str(scratch), *options],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return Path(printed.stdout.strip())


def test_the_default_model_is_served_by_the_project_itself(tmp_path):
    assert local_project(PROJECT / "models" / "default", tmp_path) == PROJECT
    assert list(tmp_path.iterdir()) == []


def test_another_model_gets_a_local_stage_with_its_own_resize_size(tmp_path):
    project = local_project(PROJECT / "models" / "fast", tmp_path)

    config = json.loads((project / ".chalice" / "config.json").read_text())
    committed = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    assert config["stages"]["local"]["environment_variables"]["MODEL_RESIZE_SIZE"] == "224"
    committed["stages"]["local"]["environment_variables"]["MODEL_RESIZE_SIZE"] = "224"
    assert config == committed  # nothing else differs
    assert (project / "chalicelib").resolve() == PROJECT / "chalicelib"

    # The real `chalice local` serves the linked app from it: /health reads the stage's settings (a bad one is
    # a 500 "misconfigured") and answers 503 here, where no local endpoint runs.
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    process = subprocess.Popen(
        [
            CHALICE,
            "--project-dir",
            str(project),
            "local",
            "--stage",
            "local",
            "--port",
            str(port),
            "--no-autoreload",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except urllib.error.HTTPError as error:
                assert error.code == 503, error.read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "chalice local did not start"
                time.sleep(0.3)
    finally:
        stop_process(process, timeout=30)


def test_another_endpoint_port_gets_a_local_stage_that_calls_it(tmp_path):
    project = local_project(
        PROJECT / "models" / "default", tmp_path, "--endpoint-url", "http://127.0.0.1:9080"
    )

    config = json.loads((project / ".chalice" / "config.json").read_text())
    committed = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    committed["stages"]["local"]["environment_variables"]["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = (
        "http://127.0.0.1:9080"
    )
    assert config == committed
    # The committed stage's own URL needs no copy.
    default_url = "http://127.0.0.1:8080"
    assert local_project(PROJECT / "models" / "default", tmp_path, "--endpoint-url", default_url) == PROJECT


def fresh_env(**settings: str) -> dict[str, str]:
    """As on a fresh machine: no AWS region, credentials or endpoint set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return {**env, "SAMPLES": str(SAMPLES), **settings}


def test_make_run_refuses_a_busy_port_and_names_the_setting_that_moves_it():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        finished = subprocess.run(
            [str(RUN_LOCAL)], env=fresh_env(ENDPOINT_PORT=port), capture_output=True, text=True, timeout=60
        )
    assert finished.returncode == 1
    assert f"port {port} is in use" in finished.stderr
    assert "make run ENDPOINT_PORT=PORT" in finished.stderr


def test_make_run_serves_on_the_ports_it_is_given(tmp_path):
    """scripts/run_local.sh itself, with every port moved and the fast model: the API on API_PORT fetches a
    photo from the file server on FILES_PORT and classifies it with the endpoint on ENDPOINT_PORT."""
    ports = {name: str(free_port()) for name in ("ENDPOINT_PORT", "FILES_PORT", "API_PORT")}
    log = tmp_path / "run_local.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(RUN_LOCAL)],
            env=fresh_env(MODEL_DIR="models/fast", **ports),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        # The script prints its greeting once the endpoint answers /ping and the API /health.
        printed = ""
        for line in process.stdout:
            printed += line
            if line.startswith("dogbreeds is running"):
                break
        assert "dogbreeds is running" in printed, log.read_text()
        assert f"http://127.0.0.1:{ports['API_PORT']}/" in printed

        api = f"http://127.0.0.1:{ports['API_PORT']}"
        with urllib.request.urlopen(f"{api}/health", timeout=30) as response:
            assert response.status == 200
        photo = f"http://127.0.0.1:{ports['FILES_PORT']}/Labrador_retriever_06455.jpg"
        request = urllib.request.Request(
            f"{api}/predict",
            data=json.dumps({"url": photo, "top_k": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert answer["predictions"][0]["label"] == "Labrador_retriever"
        assert answer["model"]["name"] == "dogbreeds-fast"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ports['ENDPOINT_PORT']}/ping", timeout=10
        ) as response:
            assert json.load(response)["model"]["name"] == "dogbreeds-fast"
    finally:
        # Ctrl-C's path: the script's trap stops what it started.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()
