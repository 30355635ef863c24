"""The API's limits never exceed the endpoint's: whatever the API accepts and sends, the endpoint takes.

The endpoint's limits are read from serving/contract.py, their one place (a test-only import: the API side
never imports serving), so that a change on either side that breaks the agreement fails here.
"""

from __future__ import annotations

import io
import json
import random

import pytest
from api_calls import assert_error, post_image
from conftest import DEFAULT_MODEL_RESIZE_SIZE, PROJECT
from pictures import zero_png
from PIL import Image

from chalicelib import settings
from chalicelib.image import prepare_image
from chalicelib.schema import validate_error
from chalicelib.settings import (
    JPEG_QUALITY,
    MAX_ASPECT_RATIO,
    MAX_ENDPOINT_BODY_BYTES,
    MAX_PIXELS,
)
from serving import contract

pytestmark = pytest.mark.usefixtures("new_container")

# SageMaker's InvokeEndpoint payload limit (6 MB).
SAGEMAKER_MAX_BODY_BYTES = 6_291_456


def worst_case(size: tuple[int, int]) -> bytes:
    """Noise, which JPEG cannot compress: the most bytes a picture of `size` can become."""
    picture = Image.frombytes("RGB", size, random.Random(5).randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_the_api_never_sends_more_than_sagemaker_or_the_endpoint_takes():
    assert MAX_ENDPOINT_BODY_BYTES <= SAGEMAKER_MAX_BODY_BYTES
    assert MAX_ENDPOINT_BODY_BYTES <= contract.MAX_BODY_BYTES


def test_the_lambdas_copy_of_the_wire_contract_is_the_endpoints():
    assert settings.RECORD_JSON == contract.RECORD_JSON
    assert settings.JSON == contract.JSON and settings.JPEG in contract.IMAGE_CONTENT_TYPES
    assert settings.DEFAULT_TOP_K == contract.DEFAULT_TOP_K
    assert settings.MAX_ENDPOINT_BODY_BYTES == contract.MAX_BODY_BYTES


def test_the_api_refuses_every_aspect_ratio_the_endpoint_refuses():
    assert MAX_ASPECT_RATIO <= contract.MAX_ASPECT_RATIO


@pytest.mark.parametrize(
    "size",
    [
        (MAX_ASPECT_RATIO * DEFAULT_MODEL_RESIZE_SIZE, DEFAULT_MODEL_RESIZE_SIZE),
        (DEFAULT_MODEL_RESIZE_SIZE, MAX_ASPECT_RATIO * DEFAULT_MODEL_RESIZE_SIZE),
        (MAX_ASPECT_RATIO, 1),
        (1200, 1100),
    ],
    ids=["widest", "tallest", "tiny-and-widest", "square"],
)
def test_what_the_api_sends_fits_the_endpoint(size):
    prepared = prepare_image(
        worst_case(size), resize_size=DEFAULT_MODEL_RESIZE_SIZE, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
    )
    sent = Image.open(io.BytesIO(prepared.jpeg))
    assert len(prepared.jpeg) <= MAX_ENDPOINT_BODY_BYTES
    assert max(sent.size) <= MAX_ASPECT_RATIO * min(sent.size)
    assert max(sent.size) <= contract.MAX_IMAGE_SIDE
    # The endpoint scales the shorter side to the model's resize size, up or down: what it then holds.
    config = json.loads((PROJECT / "models" / "default" / "config.json").read_text())
    resized = _model_resized(sent.size, config["preprocessing"]["resize_size"])
    for cap in (contract.MAX_IMAGE_PIXELS, contract.MAX_REQUEST_PIXELS):
        assert sent.width * sent.height <= cap and resized[0] * resized[1] <= cap


def _model_resized(size: tuple[int, int], resize_size: int) -> tuple[int, int]:
    scale = resize_size / min(size)
    return round(size[0] * scale), round(size[1] * scale)


def test_the_widest_picture_the_api_sends_is_answered_by_the_real_endpoint(client):
    size = (MAX_ASPECT_RATIO * DEFAULT_MODEL_RESIZE_SIZE, DEFAULT_MODEL_RESIZE_SIZE)
    response = post_image(client, worst_case(size), content_type="image/png")
    assert response.status_code == 200, response.body
    assert response.json_body["image"]["bytes_sent"] <= MAX_ENDPOINT_BODY_BYTES


def test_the_most_elongated_tiny_picture_is_answered_by_the_real_endpoint(client):
    # 20 x 1 goes as it is; the endpoint scales it up to 20 times the model's resize size on its long side.
    response = post_image(client, worst_case((MAX_ASPECT_RATIO, 1)), content_type="image/png")
    assert response.status_code == 200, response.body


@pytest.mark.parametrize(
    "path, content_type, body, status, code",
    [
        ("/predict", "application/json", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        ("/predict", "application/json", b'{"url": "http://[::1"}', 400, "bad_request"),
        ("/predict/image?top_k=\u00b2", "image/png", None, 400, "bad_request"),
        ("/predict/image", "image/png", (8000, 2), 422, "image_too_elongated"),
        ("/predict/image", "image/png", (40000, 260), 422, "image_too_elongated"),
        ("/predict/image", "image/png", (65000, 1), 422, "image_too_elongated"),
    ],
    ids=["json-100000-deep", "unclosed-ipv6-url", "top_k-superscript-two", "8000x2", "40000x260", "65000x1"],
)
def test_what_the_outside_probe_found_is_a_clear_4xx(client, path, content_type, body, status, code):
    if body is None or isinstance(body, tuple):
        body = zero_png(*(body or (300, 200)))
    response = client.http.post(path, headers={"Content-Type": content_type}, body=body)
    error = assert_error(response, status, code)
    validate_error(json.loads(response.body))
    assert "Traceback" not in error["message"]
