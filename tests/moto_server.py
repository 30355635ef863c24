"""A real `moto_server` process on a free loopback port, standing in for AWS in the jobs tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from local_servers import free_port, stop_process

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60.0) -> MotoServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"moto_server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
