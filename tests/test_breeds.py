"""GET /breeds: the model's breeds and the model, answered by the real endpoint process serving the committed
model (the Lambda has no model files), validated against the one schema; and what the API makes of an
endpoint that cannot list them."""

from __future__ import annotations

import json

import pytest
from api_calls import assert_error, client_for
from chalice.test import Client
from conftest import DEFAULT_MODEL, write_stage_project
from scripted_runtime import scripted

import app as api
from chalicelib import breeds, settings
from chalicelib.schema import validate_breeds
from classifier.model import breed_name
from serving import contract

pytestmark = pytest.mark.usefixtures("new_container")


@pytest.fixture(autouse=True)
def no_cached_breeds():
    breeds.clear_cache()
    yield
    breeds.clear_cache()


def test_breeds_are_the_served_models_labels_with_their_display_names(client):
    response = client.http.get("/breeds")
    assert response.status_code == 200, response.body
    answer = validate_breeds(json.loads(response.body))
    labels = json.loads((DEFAULT_MODEL / "labels.json").read_text())
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert [breed["label"] for breed in answer["breeds"]] == labels
    assert all(breed["breed"] == breed_name(breed["label"]) for breed in answer["breeds"])
    assert answer["model"] == {"name": config["name"], "version": str(config["version"])}
    assert "max-age" in response.headers["Cache-Control"]


def test_breeds_are_public_on_every_stage():
    assert not api.app.routes["/breeds"]["GET"].api_key_required


def test_the_api_asks_for_breeds_as_the_endpoint_contract_says():
    assert settings.BREEDS_ACCEPT == contract.BREEDS_ACCEPT


def test_breeds_are_asked_of_the_endpoint_once_per_cache_period(runtime_env, tmp_path):
    answer = {
        "breeds": [{"label": "Labrador_retriever", "breed": "Labrador retriever"}],
        "model": {"name": "dogbreeds", "version": "7"},
    }
    handler, server = scripted(body=answer)
    with server as url:
        test_client = client_for(tmp_path, url)
        first, second = test_client.http.get("/breeds"), test_client.http.get("/breeds")
    assert json.loads(first.body) == json.loads(second.body) == answer
    assert handler.requests == 1


def test_an_endpoint_from_before_breeds_is_a_clear_501(runtime_env, tmp_path):
    # What an older endpoint answers: it reads `{}` as a batch without instances and refuses it.
    body = {
        "message": "Received client error (400)",
        "OriginalStatusCode": 400,
        "OriginalMessage": 'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}',
    }
    handler, server = scripted(424, body, {"x-amzn-ErrorType": "ModelError"})
    with server as url:
        response = client_for(tmp_path, url).http.get("/breeds")
    error = assert_error(response, 501, "breeds_not_served")
    assert "GET /breeds" in error["message"]


@pytest.mark.parametrize(
    "body",
    [{"breeds": [], "model": {"name": "x", "version": "1"}}, {"breeds": [{"label": "x"}]}, b"not json"],
)
def test_breeds_off_their_schema_are_a_502(runtime_env, tmp_path, body):
    _, server = scripted(body=body)
    with server as url:
        response = client_for(tmp_path, url).http.get("/breeds")
    assert_error(response, 502, "bad_model_answer")


def test_an_asynchronous_stage_says_it_cannot_list_breeds(runtime_env, tmp_path):
    project = write_stage_project(
        tmp_path,
        ENDPOINT_KIND="async",
        ASYNC_INPUT_S3="s3://queued-photos/in",
        ASYNC_OUTPUT_S3="s3://queued-photos/out",
        ASYNC_FAILURE_S3="s3://queued-photos/failed",
    )
    response = Client(api.app, stage_name="local", project_dir=str(project)).http.get("/breeds")
    assert_error(response, 501, "breeds_not_served")
