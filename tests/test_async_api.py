"""The API in front of an asynchronous endpoint: the photo is put in S3 and queued with invoke_endpoint_async
(a real moto_server stands in for S3 and the SageMaker runtime), and the answer is 202 with where the result
will be. A serverless stage calls invoke_endpoint as a real-time one does (the real local endpoint)."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import uuid

import boto3
import pytest
from api_calls import assert_error, post_image, post_json
from chalice.test import Client
from conftest import LABRADOR, write_stage_project
from PIL import Image

import app as api
from chalicelib.schema import validate_queued_answer

REGION = "us-east-1"
RESIZE = 224  # not the default model's 260: the stage's setting is what the Lambda uses


pytestmark = pytest.mark.usefixtures("new_container")


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    """Each Lambda container has fake credentials only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def bucket(moto, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    name = f"dogbreeds-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=name)
    return name


def async_client(tmp_path, moto, **stage_env: str) -> Client:
    """The `local` stage turned into an async stage whose AWS is the moto_server."""
    env = {
        "ENDPOINT_NAME": "dogbreeds-async",
        "ENDPOINT_KIND": "async",
        "MODEL_RESIZE_SIZE": str(RESIZE),
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": moto.url,
        "UNSIGNED_ENDPOINT_REQUESTS": "false",
        **stage_env,
    }
    project = write_stage_project(tmp_path, **env)
    return Client(api.app, stage_name="local", project_dir=str(project))


def queue_moto_result(moto, answer: dict) -> None:
    """What the endpoint will have written: moto's way of setting the next async result."""
    request = urllib.request.Request(
        f"{moto.url}/moto-api/static/sagemaker/async-endpoint-results",
        data=json.dumps({"region": REGION, "results": [{"data": json.dumps(answer)}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def read_s3(uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_photo_for_an_async_endpoint_is_queued_and_answered_202(moto, bucket, samples, tmp_path):
    client = async_client(tmp_path, moto, ASYNC_INPUT_S3=f"s3://{bucket}/dogbreeds/queued/")
    queue_moto_result(moto, {"predictions": [{"label": "Labrador_retriever", "probability": 0.9}]})

    response = post_image(client, (samples / LABRADOR).read_bytes())

    assert response.status_code == 202, response.body
    answer = validate_queued_answer(json.loads(response.body))
    assert answer["status"] == "queued"
    assert answer["output_location"].startswith("s3://") and answer["failure_location"].startswith("s3://")
    assert answer["image"]["bytes_sent"] > 0 and set(answer["timings_ms"]) == {
        "fetch",
        "resize",
        "invoke",
        "total",
    }
    # The photo SageMaker reads: the prepared JPEG, under the stage's prefix, named by the inference id.
    queued = read_s3(f"s3://{bucket}/dogbreeds/queued/{answer['inference_id']}.jpg")
    photo = Image.open(io.BytesIO(queued))
    assert photo.format == "JPEG" and min(photo.size) == RESIZE
    assert len(queued) == answer["image"]["bytes_sent"]
    # Where the answer says the result is, it is (moto wrote the result queued above).
    assert json.loads(read_s3(answer["output_location"]))["predictions"][0]["label"] == "Labrador_retriever"


def test_the_lambda_function_gives_the_queued_answer(moto, bucket, samples, tmp_path):
    client = async_client(tmp_path, moto, ASYNC_INPUT_S3=f"s3://{bucket}/queued")
    image = base64.b64encode((samples / LABRADOR).read_bytes()).decode()
    answer = validate_queued_answer(client.lambda_.invoke("classify", {"image": image}).payload)
    assert answer["status"] == "queued" and answer["output_location"].startswith("s3://")
    assert read_s3(f"s3://{bucket}/queued/{answer['inference_id']}.jpg")[:2] == b"\xff\xd8"


def test_an_async_stage_without_its_input_location_is_a_clean_500(moto, bucket, samples, tmp_path):
    client = async_client(tmp_path, moto)
    error = assert_error(post_image(client, (samples / LABRADOR).read_bytes()), 500, "misconfigured")
    assert "ASYNC_INPUT_S3" in error["message"]


def test_an_input_bucket_that_does_not_exist_is_503(moto, bucket, samples, tmp_path):
    client = async_client(tmp_path, moto, ASYNC_INPUT_S3=f"s3://{bucket}-missing/queued")
    error = assert_error(post_image(client, (samples / LABRADOR).read_bytes()), 503, "endpoint_unavailable")
    assert "could not be queued" in error["message"] and "NoSuchBucket" in error["message"]


def test_a_serverless_stage_is_invoked_as_a_real_time_one(runtime_env, samples, tmp_path):
    project = write_stage_project(
        tmp_path,
        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=runtime_env.url,
        ENDPOINT_KIND="serverless",
        MODEL_RESIZE_SIZE="260",
    )
    client = Client(api.app, stage_name="local", project_dir=str(project))
    response = post_json(client, {"image": base64.b64encode((samples / LABRADOR).read_bytes()).decode()})
    assert response.status_code == 200, response.body
    assert json.loads(response.body)["predictions"][0]["label"] == "Labrador_retriever"


def test_an_async_stage_refuses_a_batch_clearly(moto, bucket, tmp_path):
    client = async_client(tmp_path, moto, ASYNC_INPUT_S3=f"s3://{bucket}/queued")
    response = client.http.post(
        "/predict/batch",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"urls": ["http://127.0.0.1/a.jpg"]}).encode(),
    )
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["code"] == "batch_not_supported"
