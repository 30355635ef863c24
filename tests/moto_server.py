"""A real `moto_server` process on a free loopback port, standing in for AWS in the jobs tests, and the one
SageMaker call it lacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from botocore.awsrequest import AWSResponse
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


class EndpointUpdates:
    """What moto lacks: UpdateEndpoint. Botocore hooks on one sagemaker client record each UpdateEndpoint
    and make the client's later DescribeEndpoint calls answer as SageMaker does once the update is over:
    InService on the new config, or, with `roll_back`, on the old config with the reason (an alarm fired).
    With `persist`, the update moves moto's endpoint itself onto the new config (deleted and created again
    under its name), so every later client sees it, as after a real update."""

    def __init__(self, client, roll_back: bool = False, persist: bool = False) -> None:
        self.client = client
        self.roll_back = roll_back
        self.persist = persist and not roll_back
        self.requests: list[dict] = []
        self._old_config: str | None = None
        client.meta.events.register("before-call.sagemaker.UpdateEndpoint", self._update)
        client.meta.events.register("before-call.sagemaker.DescribeEndpoint", self._describe)

    def _update(self, params, **_):
        request = json.loads(params["body"])
        self._old_config = self.client.describe_endpoint(EndpointName=request["EndpointName"])[
            "EndpointConfigName"
        ]
        self.requests.append(request)
        if self.persist:
            self.client.delete_endpoint(EndpointName=request["EndpointName"])
            self.client.create_endpoint(
                EndpointName=request["EndpointName"], EndpointConfigName=request["EndpointConfigName"]
            )
        return AWSResponse("", 200, {}, None), {
            "EndpointArn": f"arn:aws:sagemaker:::endpoint/{request['EndpointName']}"
        }

    def _describe(self, params, **_):
        if self.persist or not self.requests or self._old_config is None:
            return None  # moto answers
        request = json.loads(params["body"])
        last = self.requests[-1]
        if request["EndpointName"] != last["EndpointName"]:
            return None
        answer = {
            "EndpointName": last["EndpointName"],
            "EndpointArn": f"arn:aws:sagemaker:::endpoint/{last['EndpointName']}",
            "EndpointStatus": "InService",
            "CreationTime": 0,
            "LastModifiedTime": 0,
            "EndpointConfigName": last["EndpointConfigName"],
        }
        if self.roll_back:
            alarm = last["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"][0]["AlarmName"]
            answer["EndpointConfigName"] = self._old_config
            answer["FailureReason"] = f"Alarm {alarm} fired; the update was rolled back"
        return AWSResponse("", 200, {}, None), answer
