"""Hypothesis throws odd inputs at every parser on the API side: each must answer or raise an ApiError (a
clear 4xx/5xx answer), never anything else, which would be a 500."""

from __future__ import annotations

import io
import json
import os
import random

import pytest
from conftest import DEFAULT_MODEL_RESIZE_SIZE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scripted_runtime import VALID_ANSWER

from chalicelib import batch_request, image_request
from chalicelib.errors import ApiError, BadModelAnswer
from chalicelib.fetch import address_refusal, fetch_image
from chalicelib.image import prepare_image
from chalicelib.invoke import parse_answer
from chalicelib.schema import validate_answer
from chalicelib.settings import JPEG_QUALITY, MAX_PIXELS

# Bounded so the whole file takes seconds (FUZZ_EXAMPLES=3000 for a longer hunt); failures are replayed.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# Requests that are almost right: the right field names with values of any kind.
request_fields = st.dictionaries(
    st.sampled_from(["url", "image", "top_k", "extra"]), json_values | st.text(), min_size=0, max_size=3
)


def answers_or_refuses(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except ApiError as error:
        assert 400 <= error.status < 600 and error.code and error.message
        return error


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_json_body_bytes(raw):
    answers_or_refuses(image_request.parse_json_body, raw)


@FUZZ
@given(request_fields | json_values)
def test_json_body_fields(fields):
    answers_or_refuses(image_request.parse_fields, fields)
    answers_or_refuses(image_request.parse_json_body, json.dumps(fields).encode())


batch_fields = st.dictionaries(
    st.sampled_from(["images", "urls", "top_k", "extra"]),
    json_values | st.lists(st.text(max_size=20), max_size=12),
    min_size=0,
    max_size=3,
)


@FUZZ
@given(batch_fields | json_values)
def test_batch_body_fields(fields):
    answers_or_refuses(batch_request.parse_batch_fields, fields)
    answers_or_refuses(batch_request.parse_batch_body, json.dumps(fields).encode())


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("parse", [image_request.parse_json_body, batch_request.parse_batch_body])
def test_deeply_nested_json_is_a_bad_request(depth, parse):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        error = answers_or_refuses(parse, raw)
        assert isinstance(error, ApiError) and error.status == 400


@FUZZ
@given(st.text(max_size=12))
def test_top_k_query_text(text):
    result = answers_or_refuses(image_request.parse_top_k_text, text)
    assert isinstance(result, ApiError) or 1 <= result <= image_request.MAX_TOP_K


@pytest.mark.parametrize("text", ["²", "٣", "5\u0662", "1" * 5000, "-1", "0", "+3", "3.0", "0x5", " 7 "])
def test_top_k_query_edge_cases(text):
    result = answers_or_refuses(image_request.parse_top_k_text, text)
    assert result == 7 if text == " 7 " else isinstance(result, ApiError) and result.status == 400


@FUZZ
@given(st.text(max_size=40))
def test_base64_field(text):
    answers_or_refuses(image_request.decode_base64, text)


# Hosts that are refused before any connection, so that the fuzzing stays off the network.
refused_hosts = st.sampled_from(
    ["127.0.0.1", "[::1]", "10.0.0.1", "169.254.169.254", "[fe80::1]", "0", "[::"]
)
url_parts = st.text(alphabet=st.characters(codec="utf-8"), max_size=15)


@FUZZ
@given(
    st.sampled_from(["http", "https", "ftp", "HTTP", "", "javascript"]),
    st.sampled_from(["", "user@", "a:b@", "@"]),
    refused_hosts,
    st.sampled_from(["", ":80", ":0", ":99999", ":x", ":"]),
    url_parts,
)
def test_urls(scheme, userinfo, host, port, rest):
    url = f"{scheme}://{userinfo}{host}{port}/{rest}"
    error = answers_or_refuses(fetch_image, url, max_bytes=1000)
    assert isinstance(error, ApiError) and 400 <= error.status < 500


@pytest.mark.parametrize(
    "url", ["http://[::1", "https://[::1]:x/", "http://\udc80/", "http://a\x00b/", "http://%zz/"]
)
def test_url_edge_cases(url):
    error = answers_or_refuses(fetch_image, url, max_bytes=1000)
    assert isinstance(error, ApiError) and 400 <= error.status < 500


@FUZZ
@given(st.ip_addresses().map(str))
def test_address_refusal_takes_any_address(address):
    assert address_refusal(address) is None or isinstance(address_refusal(address), str)


def small_images() -> list[bytes]:
    picture = Image.frombytes("RGB", (40, 30), random.Random(3).randbytes(40 * 30 * 3))
    out = []
    for format, mode, options in [
        ("JPEG", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {"transparency": 0}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {}),
        ("WEBP", "RGBA", {"lossless": True}),
    ]:
        buffer = io.BytesIO()
        image = picture.quantize(16) if mode == "P" else picture.convert(mode)
        image.save(buffer, format=format, **options)
        out.append(buffer.getvalue())
    return out


SMALL_IMAGES = small_images()


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SMALL_IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(damaged_images() | st.binary(max_size=200))
def test_images(data):
    answers_or_refuses(
        prepare_image,
        data,
        resize_size=DEFAULT_MODEL_RESIZE_SIZE,
        max_pixels=MAX_PIXELS,
        quality=JPEG_QUALITY,
    )


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda value: json.dumps(value).encode()))
def test_endpoint_answers(body):
    result = answers_or_refuses(parse_answer, body)
    assert isinstance(result, BadModelAnswer) or validate_answer(result) == result


@FUZZ
@given(st.sampled_from(sorted(VALID_ANSWER)), json_values)
def test_endpoint_answers_with_one_field_changed(field, value):
    result = answers_or_refuses(parse_answer, json.dumps({**VALID_ANSWER, field: value}).encode())
    assert isinstance(result, BadModelAnswer) or result[field] == value
