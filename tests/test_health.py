"""/health's deep check: the real local endpoint up and down (GET /ping), SageMaker's DescribeEndpoint through
botocore's Stubber, and the cache that keeps probes from costing a check each."""

from __future__ import annotations

import json

import pytest
from api_calls import client_for
from botocore.stub import Stubber
from chalice.test import Client
from conftest import PROJECT
from local_servers import free_port

import app as api
from chalicelib import health
from chalicelib.schema import validate_error
from chalicelib.settings import RETRY_AFTER_S

pytestmark = pytest.mark.usefixtures("new_container")


@pytest.fixture(autouse=True)
def fresh_health_cache():
    health.clear_cache()
    health.control_client.cache_clear()
    yield
    health.clear_cache()
    health.control_client.cache_clear()


def test_ok_while_the_local_endpoint_is_up(client):
    response = client.http.get("/health")
    assert response.status_code == 200, response.body
    body = response.json_body
    assert body["status"] == "ok" and body["endpoint"] == "dogbreeds-local"
    assert body["endpoint_status"] == "ready" and body["checked_at"].endswith("Z")


def test_503_while_the_local_endpoint_is_down(runtime_env, tmp_path):
    response = client_for(tmp_path, f"http://127.0.0.1:{free_port()}").http.get("/health")
    error = assert_health_error(response)
    assert response.json_body["status"] == "unavailable"
    assert response.json_body["endpoint_status"] == "unreachable"
    assert "dogbreeds-local" in error["message"]


def assert_health_error(response) -> dict:
    assert response.status_code == 503, response.body
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    body = json.loads(response.body)
    validate_error(body)
    assert body["error"]["code"] == "endpoint_unavailable"
    return body["error"]


def test_a_check_is_reused_until_it_is_old(runtime_env, monkeypatch):
    # Down first; then the endpoint is up, but the cached answer stands until it is older than max_age_s.
    monkeypatch.setenv(health.RUNTIME_URL_ENV, f"http://127.0.0.1:{free_port()}")
    assert not health.endpoint_health("dogbreeds-local").ok
    monkeypatch.setenv(health.RUNTIME_URL_ENV, runtime_env.url)
    assert not health.endpoint_health("dogbreeds-local").ok
    assert health.endpoint_health("dogbreeds-local", max_age_s=0).ok
    assert health.endpoint_health("dogbreeds-local").ok


@pytest.fixture
def aws_stage(monkeypatch):
    """A deployed stage: no runtime URL, so /health asks SageMaker's control plane (stubbed)."""
    monkeypatch.delenv(health.RUNTIME_URL_ENV, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("ENDPOINT_NAME", "dogbreeds-dev")
    stubber = Stubber(health.control_client())
    with stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def describe_answer(status: str) -> dict:
    return {
        "EndpointName": "dogbreeds-dev",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/dogbreeds-dev",
        "EndpointConfigName": "dogbreeds-dev-config",
        "EndpointStatus": status,
        "CreationTime": "2026-11-27T00:00:00Z",
        "LastModifiedTime": "2026-11-27T00:00:00Z",
    }


def dev_client() -> Client:
    return Client(api.app, stage_name="dev", project_dir=str(PROJECT))


@pytest.mark.parametrize(
    "status, ok", [("InService", True), ("Updating", True), ("Creating", False), ("Failed", False)]
)
def test_describe_endpoint_decides_on_aws(aws_stage, status, ok):
    aws_stage.add_response("describe_endpoint", describe_answer(status), {"EndpointName": "dogbreeds-dev"})
    response = dev_client().http.get("/health")
    if ok:
        assert response.status_code == 200 and response.json_body["endpoint_status"] == status
    else:
        assert status in assert_health_error(response)["message"]


def test_a_missing_endpoint_is_not_found(aws_stage):
    aws_stage.add_client_error(
        "describe_endpoint", "ValidationException", "Could not find endpoint", expected_params=None
    )
    response = dev_client().http.get("/health")
    assert "not found" in assert_health_error(response)["message"]


def test_many_probes_cost_one_describe(aws_stage):
    # The stubber holds one answer: a second call to SageMaker would fail the test.
    aws_stage.add_response(
        "describe_endpoint", describe_answer("InService"), {"EndpointName": "dogbreeds-dev"}
    )
    probe = dev_client()
    for _ in range(5):
        assert probe.http.get("/health").status_code == 200
