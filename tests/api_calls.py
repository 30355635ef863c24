"""Calling the API in-process through chalice's test client: a client for a stage, requests by route, and the
shape every refusal has."""

from __future__ import annotations

import json
from pathlib import Path

from chalice.test import Client
from conftest import write_stage_project

import app as api


def client_for(directory: Path, endpoint_url: str) -> Client:
    """The `local` stage, its endpoint at `endpoint_url`, with its project in `directory`."""
    project = write_stage_project(directory, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=endpoint_url)
    return Client(api.app, stage_name="local", project_dir=str(project))


def post_json(client: Client, body, path: str = "/predict"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.http.post(path, headers={"Content-Type": "application/json"}, body=raw)


def post_image(client: Client, data: bytes, content_type: str = "image/jpeg", query: str = ""):
    return client.http.post(f"/predict/image{query}", headers={"Content-Type": content_type}, body=data)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.body
    body = json.loads(response.body)
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.body.decode()
    return body["error"]
