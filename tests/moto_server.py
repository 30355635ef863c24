"""A real `moto_server` process on a free loopback port, standing in for AWS in the jobs tests, and the one
SageMaker call it lacks."""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
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


class AsyncOutputs:
    """What moto lacks: an async endpoint's output config. moto writes each async result into a bucket of its
    own; SageMaker writes it under the endpoint config's S3OutputPath (failures under S3FailurePath), named by
    an id of its own. This stands in front of moto_server for the SageMaker runtime (point
    AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME at `url`, from this process or another): it passes every request on,
    records each InvokeEndpointAsync (its headers say what was queued and how), and answers SageMaker's
    locations in place of moto's. The endpoint's own part, writing there, is the test's (`answer`)."""

    def __init__(self, moto_url: str, output: str, failure: str) -> None:
        self.moto_url = moto_url
        self.output, self.failure = output.rstrip("/"), failure.rstrip("/")
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_AsyncOutputsHandler,), {"outputs": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def queued(self) -> list[dict[str, str]]:
        """Each async invocation so far: its request headers plus OutputLocation and FailureLocation."""
        with self.lock:
            return [dict(request) for request in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def answer(queued: dict[str, str], endpoint_url: str, s3) -> None:
        """The endpoint's part for one queued request: its photo answered by a real endpoint process at
        `endpoint_url`, with the request's content type, accept and CustomAttributes, and written (with the
        S3 client `s3`) where SageMaker writes an answer, or a refusal where it writes failures."""
        headers = {
            "Content-Type": queued["X-Amzn-SageMaker-Content-Type"],
            "Accept": queued["X-Amzn-SageMaker-Accept"],
            "X-Amzn-SageMaker-Custom-Attributes": queued["X-Amzn-SageMaker-Custom-Attributes"],
        }
        bucket, _, key = queued["X-Amzn-SageMaker-InputLocation"].removeprefix("s3://").partition("/")
        photo = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        request = urllib.request.Request(f"{endpoint_url}/invocations", data=photo, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                place, body = queued["X-Amzn-SageMaker-OutputLocation"], response.read()
        except urllib.error.HTTPError as error:
            place, body = queued["X-Amzn-SageMaker-FailureLocation"], error.read()
        bucket, _, key = place.removeprefix("s3://").partition("/")
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    def relocate(self, request_headers: dict[str, str]) -> dict[str, str]:
        name = str(uuid.uuid4())
        places = {
            "X-Amzn-SageMaker-OutputLocation": f"{self.output}/{name}.out",
            "X-Amzn-SageMaker-FailureLocation": f"{self.failure}/{name}-error.out",
        }
        with self.lock:
            self.requests.append({**request_headers, **places})
        return places


class _AsyncOutputsHandler(http.server.BaseHTTPRequestHandler):
    outputs: AsyncOutputs

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # The signed headers as they came (moto checks no signature), but for the host: moto's own.
        # http.client, not urllib: urllib adds a form Content-Type, and moto takes that for another service.
        forwarded = {name: value for name, value in self.headers.items() if name.lower() != "host"}
        moto_host = urllib.parse.urlsplit(self.outputs.moto_url).netloc
        connection = http.client.HTTPConnection(moto_host, timeout=30)
        try:
            connection.request("POST", self.path, body=body, headers=forwarded)
            response = connection.getresponse()
            status, headers, answer = response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()
        if status == 200 and self.path.endswith("/async-invocations"):
            headers.update(self.outputs.relocate(dict(self.headers)))
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
