"""Every request leaves one JSON log line and CloudWatch EMF metrics (chalicelib/observability.py): real
requests through chalice.test.Client and the `classify` Lambda function, against the real local endpoint,
with the process's real stdout captured."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from chalice.test import Client
from conftest import LABRADOR, PROJECT
from PIL import Image

import app as api
from chalicelib import observability

pytestmark = pytest.mark.usefixtures("new_container")

PHASE_METRICS = {"FetchLatency", "ResizeLatency", "InvokeLatency", "TotalLatency"}


def printed(capsys) -> tuple[list[dict], list[dict], str]:
    """(request log lines, EMF blobs, all of stdout) printed since the last call."""
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    logs = [line for line in lines if line.get("message") == "request"]
    blobs = [line for line in lines if "_aws" in line]
    return logs, blobs, out


def metric_values(blobs: list[dict]) -> dict[str, list]:
    """Every metric in the blobs by name, after checking each blob is well-formed EMF."""
    values: dict[str, list] = {}
    for blob in blobs:
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == observability.NAMESPACE
        assert isinstance(blob["_aws"]["Timestamp"], int)
        for dimension_set in directive["Dimensions"]:
            assert {"service", "stage"} <= set(dimension_set)
            for name in dimension_set:
                assert isinstance(blob[name], str), name  # each dimension's value is in the blob
        for metric in directive["Metrics"]:
            unit = "Milliseconds" if metric["Name"].endswith("Latency") else "Count"
            assert metric["Unit"] == unit, metric
            values.setdefault(metric["Name"], []).extend(blob[metric["Name"]])
    return values


def test_a_classification_leaves_one_line_with_its_facts_and_metrics(client, capsys, labrador):
    capsys.readouterr()
    response = client.http.post(
        "/predict/image?top_k=3", headers={"Content-Type": "image/jpeg"}, body=labrador
    )
    assert response.status_code == 200
    answer = json.loads(response.body)
    (log,), blobs, out = printed(capsys)
    assert log["service"] == "dogbreeds" and log["level"] == "INFO" and log["stage"] == "local"
    assert log["request_id"] and log["lambda_request_id"]
    assert (log["route"], log["method"], log["status"], log.get("error_code")) == (
        "/predict/image",
        "POST",
        200,
        None,
    )
    assert log["bytes_in"] == len(labrador) and log["bytes_out"] == len(response.body)
    assert log["model_version"] == answer["model"]["version"]
    assert log["top_breed"] == answer["predictions"][0]["label"] == "Labrador_retriever"
    assert log["is_dog"] is True and log["timings_ms"] == answer["timings_ms"]
    assert log["image_bytes_sent"] == answer["image"]["bytes_sent"]
    assert log["duration_ms"] >= answer["timings_ms"]["total"]
    # Never the image: not its bytes, not their base64, and nothing the size of a photo.
    assert base64.b64encode(labrador[1000:1048]).decode() not in out
    assert len(out) < 4096
    metrics = metric_values(blobs)
    assert metrics["Requests"] == [1.0] and metrics["Classified"] == [1.0] and metrics["NotADog"] == [0.0]
    assert PHASE_METRICS <= set(metrics)
    assert metrics["InvokeLatency"] == [answer["timings_ms"]["invoke"]]
    assert "Errors" not in metrics


def test_a_url_leaves_its_host_and_never_its_path_or_query(client, capsys, sample_files):
    capsys.readouterr()
    url = f"{sample_files}/{LABRADOR}?token=s3cr3t-t0ken&sig=abc"
    response = client.http.post(
        "/predict", headers={"Content-Type": "application/json"}, body=json.dumps({"url": url})
    )
    assert response.status_code == 200, response.body
    (log,), _, out = printed(capsys)
    assert log["url_hosts"] == ["127.0.0.1"]
    assert "s3cr3t-t0ken" not in out and LABRADOR not in out and "sig=" not in out


def test_an_error_leaves_its_code_and_an_errors_metric_by_code(client, capsys):
    capsys.readouterr()
    response = client.http.post(
        "/predict",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"url": "http://169.254.169.254/latest/meta-data/iam?x=secret"}),
    )
    assert response.status_code == 400
    (log,), blobs, out = printed(capsys)
    assert (log["status"], log["error_code"]) == (400, "url_not_allowed")
    assert log["url_hosts"] == ["169.254.169.254"] and "meta-data" not in out and "secret" not in out
    assert "top_breed" not in log
    (errors,) = [blob for blob in blobs if "Errors" in blob]
    assert errors["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "stage", "code"]]
    assert (errors["code"], errors["stage"], errors["Errors"]) == ("url_not_allowed", "local", [1.0])
    assert metric_values(blobs)["Requests"] == [1.0]


def test_chalice_own_errors_and_malformed_urls_are_logged_too(client, capsys):
    capsys.readouterr()
    assert client.http.put("/predict", body=b"{}").status_code == 405
    response = client.http.post(
        "/predict", headers={"Content-Type": "application/json"}, body=json.dumps({"url": "http://[::1"})
    )
    first, second = printed(capsys)[0]
    assert (first["status"], first["error_code"]) == (405, "method_not_allowed")
    assert second["url_hosts"] == ["(unparsable)"] and second["status"] == response.status_code


def test_a_picture_without_a_dog_is_counted(client, capsys):
    # A flat grey picture: the model's ImageNet classifiers see no dog in it.
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, format="PNG")
    capsys.readouterr()
    response = client.http.post(
        "/predict/image", headers={"Content-Type": "image/png"}, body=buffer.getvalue()
    )
    assert response.status_code == 200
    assert json.loads(response.body)["is_dog"] is False
    (log,), blobs, _ = printed(capsys)
    assert log["is_dog"] is False
    assert metric_values(blobs)["NotADog"] == [1.0]


def test_a_direct_invocation_leaves_the_same_line(client, capsys, labrador):
    event = {"image": base64.b64encode(labrador).decode(), "top_k": 2}
    capsys.readouterr()
    answer = client.lambda_.invoke("classify", event).payload
    (log,), blobs, out = printed(capsys)
    assert log["route"].startswith("lambda:") and log["method"] == "invoke"
    assert (log["status"], log["top_breed"], log["is_dog"]) == (200, answer["predictions"][0]["label"], True)
    assert log["bytes_in"] == len(json.dumps(event, separators=(",", ":")))
    assert event["image"][2000:2064] not in out
    assert metric_values(blobs)["Classified"] == [1.0]

    capsys.readouterr()
    payload = client.lambda_.invoke("classify", {"picture": 1}).payload
    (log,), blobs, _ = printed(capsys)
    assert (
        (log["status"], log["error_code"])
        == (payload["error"]["status"], "bad_request")
        == (400, "bad_request")
    )
    assert any(blob.get("code") == "bad_request" for blob in blobs)


def test_the_app_logs_without_the_xray_sdk_which_the_lambda_does_not_ship():
    code = (
        "import sys, json\n"
        "sys.modules['aws_xray_sdk'] = None\n"  # makes `import aws_xray_sdk` fail, as on Lambda
        "from chalice.test import Client\n"
        "import app\n"
        "with Client(app.app, stage_name='dev') as client:\n"
        # A request answered without the network: /health would ask SageMaker (tests/test_health.py).
        "    json_body = {'Content-Type': 'application/json'}\n"
        "    response = client.http.post('/predict', headers=json_body, body=b'{')\n"
        "    assert response.status_code == 400\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert result.returncode == 0, result.stderr
    (log,) = [json.loads(line) for line in result.stdout.splitlines() if '"message":"request"' in line]
    assert (log["route"], log["status"], log["error_code"], log["stage"]) == (
        "/predict",
        400,
        "invalid_json",
        "dev",
    )


def test_a_failure_to_log_never_changes_the_answer(capsys, monkeypatch):
    def broken_stage_name():
        raise RuntimeError("observability bug")

    monkeypatch.setattr(observability, "stage_name", broken_stage_name)
    capsys.readouterr()
    with Client(api.app, stage_name="dev", project_dir=str(PROJECT)) as client:
        response = client.http.post(
            "/predict", headers={"Content-Type": "application/json"}, body=b"{not json"
        )
    assert response.status_code == 400 and json.loads(response.body)["error"]["code"] == "invalid_json"
    out = capsys.readouterr().out
    (line,) = [json.loads(line) for line in out.splitlines() if "could not log the request" in line]
    assert line["level"] == "ERROR" and "observability bug" in line["exception"]
