"""The API in front of an asynchronous endpoint: the photo is put in S3 and queued with invoke_endpoint_async
(a real moto_server stands in for S3 and the SageMaker runtime), POST answers 202 with where to ask, and
GET /predict/results/{inference_id} answers the model's answer once it is in S3.

moto writes async results into buckets of its own, so moto_server.AsyncOutputs answers SageMaker's locations
(the endpoint config's output paths), and the test plays the endpoint: the real local endpoint answers each
queued photo with its request's CustomAttributes, written where SageMaker writes it. A serverless stage calls
invoke_endpoint as a real-time one does (the real local endpoint)."""

from __future__ import annotations

import base64
import io
import json
import uuid

import boto3
import pytest
from api_calls import assert_error, post_image, post_json
from chalice.test import Client
from conftest import LABRADOR, write_stage_project
from moto_server import AsyncOutputs
from PIL import Image

import app as api
from chalicelib.schema import validate_pending, validate_queued_answer, validate_result
from chalicelib.settings import MAX_RESULT_BYTES, RETRY_AFTER_S

REGION = "us-east-1"
RESIZE = 224  # not the default model's 260: the stage's setting is what the Lambda uses


pytestmark = pytest.mark.usefixtures("new_container")


@pytest.fixture(autouse=True)
def fake_credentials_and_own_session(monkeypatch):
    """Each Lambda container has fake credentials only, and a boto3 default session of its own: one made while
    chalice.test patches the environment would keep this test's settings for later tests."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def bucket(moto, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    name = f"dogbreeds-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=name)
    return name


@pytest.fixture
def outputs(moto, bucket):
    """The SageMaker runtime as an endpoint configured to write under s3://BUCKET/results(-failures)."""
    stand_in = AsyncOutputs(moto.url, f"s3://{bucket}/results", f"s3://{bucket}/results-failures")
    yield stand_in
    stand_in.stop()


def async_client(tmp_path, outputs: AsyncOutputs, **stage_env: str) -> Client:
    """The `local` stage turned into an async stage whose AWS is the moto_server."""
    bucket = outputs.output.removeprefix("s3://").split("/")[0]
    env = {
        "ENDPOINT_NAME": "dogbreeds-async",
        "ENDPOINT_KIND": "async",
        "MODEL_RESIZE_SIZE": str(RESIZE),
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": outputs.url,
        "UNSIGNED_ENDPOINT_REQUESTS": "false",
        "ASYNC_INPUT_S3": f"s3://{bucket}/dogbreeds/queued/",
        "ASYNC_OUTPUT_S3": outputs.output,
        "ASYNC_FAILURE_S3": outputs.failure,
        **stage_env,
    }
    project = write_stage_project(tmp_path, **env)
    return Client(api.app, stage_name="local", project_dir=str(project))


def read_s3(uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()


def write_s3(uri: str, body: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=key, Body=body)


def answer_queued(queued: dict[str, str], endpoint_url: str) -> None:
    AsyncOutputs.answer(queued, endpoint_url, boto3.client("s3", region_name=REGION))


def get_result(client: Client, result_url: str):
    return client.http.get(result_url)


def test_a_queued_photo_is_answered_at_its_result_url(endpoint, outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    response = client.http.post(
        "/predict/image?top_k=5&min_confidence=0.2",
        headers={"Content-Type": "image/jpeg"},
        body=(samples / LABRADOR).read_bytes(),
    )

    assert response.status_code == 202, response.body
    queued = validate_queued_answer(json.loads(response.body))
    assert queued["result_url"] == f"/predict/results/{queued['inference_id']}"
    assert response.headers["Location"] == queued["result_url"]
    # Pending until the endpoint has written its answer.
    pending = get_result(client, queued["result_url"])
    assert pending.status_code == 202 and pending.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert validate_pending(json.loads(pending.body)) == {
        "status": "pending",
        "inference_id": queued["inference_id"],
    }
    # top_k and min_confidence travel with the queued request, for the endpoint to apply as it always does.
    (request,) = outputs.queued()
    assert request["X-Amzn-SageMaker-Custom-Attributes"] == "top_k=5,min_confidence=0.2"
    assert request["X-Amzn-SageMaker-Inference-Id"] == queued["inference_id"]

    answer_queued(request, endpoint.url)
    done = get_result(client, queued["result_url"])
    assert done.status_code == 200, done.body
    result = validate_result(json.loads(done.body))
    assert result["inference_id"] == queued["inference_id"]
    assert result["predictions"][0]["label"] == "Labrador_retriever"
    assert 1 <= len(result["predictions"]) < 5
    assert all(prediction["probability"] >= 0.2 for prediction in result["predictions"])


def test_a_photo_for_an_async_endpoint_is_queued_under_the_stages_prefix(outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    response = post_image(client, (samples / LABRADOR).read_bytes())

    assert response.status_code == 202, response.body
    answer = validate_queued_answer(json.loads(response.body))
    assert answer["status"] == "queued"
    assert answer["output_location"].startswith(outputs.output + "/")
    assert answer["failure_location"].startswith(outputs.failure + "/")
    assert answer["image"]["bytes_sent"] > 0 and set(answer["timings_ms"]) == {
        "fetch",
        "resize",
        "invoke",
        "total",
    }
    # The photo SageMaker reads: the prepared JPEG, under the stage's prefix, named by the inference id.
    bucket = outputs.output.removeprefix("s3://").split("/")[0]
    queued = read_s3(f"s3://{bucket}/dogbreeds/queued/{answer['inference_id']}.jpg")
    photo = Image.open(io.BytesIO(queued))
    assert photo.format == "JPEG" and min(photo.size) == RESIZE
    assert len(queued) == answer["image"]["bytes_sent"]
    # No min_confidence asked, none sent: the endpoint's default holds.
    assert outputs.queued()[0]["X-Amzn-SageMaker-Custom-Attributes"] == "top_k=5"


def test_a_failed_inference_answers_the_models_error(outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    queued = json.loads(post_image(client, (samples / LABRADOR).read_bytes()).body)
    # What SageMaker writes when the container refuses: its message, then the traceback.
    failure = b"Received server error (500) from primary: out of memory\nTraceback (most recent call last):"
    write_s3(outputs.queued()[0]["X-Amzn-SageMaker-FailureLocation"], failure)
    error = assert_error(get_result(client, queued["result_url"]), 502, "model_error")
    assert "out of memory" in error["message"] and "Traceback" not in error["message"]


def test_an_answer_off_the_schema_or_too_large_is_502(outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    for written in (b'{"predictions": "Labrador"}', b" " * (MAX_RESULT_BYTES + 1)):
        queued = json.loads(post_image(client, (samples / LABRADOR).read_bytes()).body)
        write_s3(outputs.queued()[-1]["X-Amzn-SageMaker-OutputLocation"], written)
        assert_error(get_result(client, queued["result_url"]), 502, "bad_model_answer")


def test_an_inference_id_names_only_a_ticket_of_this_stage(outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    for malformed in ("abc", "A" * 32, str(uuid.uuid4()), "0" * 31 + "g", "..%2F..%2Fsecret", "0" * 33):
        assert_error(get_result(client, f"/predict/results/{malformed}"), 400, "bad_request")
    error = assert_error(get_result(client, f"/predict/results/{uuid.uuid4().hex}"), 404, "not_found")
    assert "no queued request" in error["message"]


def test_a_real_time_stage_has_no_queued_results(runtime_env, tmp_path):
    project = write_stage_project(tmp_path, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=runtime_env.url)
    client = Client(api.app, stage_name="local", project_dir=str(project))
    error = assert_error(get_result(client, f"/predict/results/{uuid.uuid4().hex}"), 404, "not_found")
    assert "answers at once" in error["message"]


def test_an_endpoint_writing_outside_the_stages_prefixes_is_misconfigured(moto, bucket, samples, tmp_path):
    """moto's own async answer: results in a bucket of its own, which the stage may not read."""
    stand_in = AsyncOutputs(moto.url, f"s3://{bucket}/results", f"s3://{bucket}/results-failures")
    stand_in.stop()
    client = async_client(tmp_path, stand_in, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=moto.url)
    error = assert_error(post_image(client, (samples / LABRADOR).read_bytes()), 500, "misconfigured")
    assert "ASYNC_OUTPUT_S3" in error["message"]


def test_the_lambda_function_gives_the_queued_answer(outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs)
    image = base64.b64encode((samples / LABRADOR).read_bytes()).decode()
    answer = validate_queued_answer(client.lambda_.invoke("classify", {"image": image}).payload)
    assert answer["status"] == "queued" and answer["output_location"].startswith(outputs.output)
    assert "result_url" not in answer  # no HTTP route was asked
    bucket = outputs.output.removeprefix("s3://").split("/")[0]
    assert read_s3(f"s3://{bucket}/dogbreeds/queued/{answer['inference_id']}.jpg")[:2] == b"\xff\xd8"


@pytest.mark.parametrize("setting", ["ASYNC_INPUT_S3", "ASYNC_OUTPUT_S3", "ASYNC_FAILURE_S3"])
def test_an_async_stage_without_one_of_its_locations_is_a_clean_500(setting, outputs, samples, tmp_path):
    client = async_client(tmp_path, outputs, **{setting: ""})
    error = assert_error(post_image(client, (samples / LABRADOR).read_bytes()), 500, "misconfigured")
    assert setting in error["message"]


def test_an_input_bucket_that_does_not_exist_is_503(outputs, bucket, samples, tmp_path):
    client = async_client(tmp_path, outputs, ASYNC_INPUT_S3=f"s3://{bucket}-missing/queued")
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


def test_an_async_stage_refuses_a_batch_clearly(outputs, tmp_path):
    client = async_client(tmp_path, outputs)
    response = client.http.post(
        "/predict/batch",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"urls": ["http://127.0.0.1/a.jpg"]}).encode(),
    )
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["code"] == "batch_not_supported"
