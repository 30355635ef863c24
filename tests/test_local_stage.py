"""`make run` serves the API with the served model's resize size (scripts/local_stage.py), through a real
`chalice local` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import CHALICE, PROJECT
from local_servers import free_port, stop_process


def local_project(model_dir: Path, scratch: Path) -> Path:
    printed = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "local_stage.py"), str(model_dir), str(scratch)],
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
