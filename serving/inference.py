"""SageMaker inference handlers: model_fn -> input_fn -> predict_fn -> output_fn.

The same module runs in SageMaker's PyTorch inference container (as the entry point) and in the local endpoint
(`python -m serving.server`). Its answer for one image looks like this; the schema it must match is
ANSWER_SCHEMA in chalicelib/schema.py, the one place of the response schema (the API validates every answer):

    {"predictions": [{"label": "Labrador_retriever", "breed": "Labrador retriever", "probability": 0.93},
                     ...],
     "confident": true, "is_dog": true, "dog_probability": 0.99,
     "model": {"name": "dogbreeds", "version": "1"}}

The probabilities are the model's calibrated ones; `is_dog` says whether the dog probability reaches the
artifact's dog threshold, and `confident` whether the top breed's probability reaches its confidence threshold
and the dog probability its (stricter or equal) confident-dog threshold (classifier.model.Thresholds).
CustomAttributes `min_confidence=0.3` leaves out the predictions under that probability (the list may then
be empty).

A JSON batch `{"instances": [{"b64": "..."}, ...]}` answers a list of those, in order. It never fetches URLs:
endpoints may run network-isolated, and fetching is the API's job.

A request that asks for `Accept: application/vnd.dogbreeds.breeds+json` (serving.contract.BREEDS_ACCEPT)
gets the model's breeds and its name and version instead, without running the model.

A request that asks for `Accept: application/vnd.dogbreeds.record+json` (RECORD_JSON: Batch Transform jobs
and the API's multi-image route do) gets an image it cannot classify answered in place, with status 200:

    {"error": {"code": "unreadable_image", "status": 400, "message": "cannot decode the image; ..."}}

as the whole answer for one image, or in that image's slot of a batch's list. One bad object of a transform
job then names itself in the job's output instead of failing the job, and one bad image of a batch leaves the
others their answers. Without it, such a request fails with the error's HTTP status, as before.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.model import Thresholds, breed_name, read_config
from classifier.preprocessing import Preprocessing, UnreadableImageError, open_image
from classifier.runtime import RUNTIMES, Device, OnnxRunner, TorchRunner, load_runner, softmax
from serving.contract import (
    BREEDS_ACCEPT,
    DEFAULT_TOP_K,
    IMAGE_CONTENT_TYPES,
    JSON,
    MAX_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MAX_INSTANCES,
    MAX_REQUEST_PIXELS,
    RECORD_JSON,
)
from serving.identity import model_identity

log = logging.getLogger(__name__)

CONTENT_TYPES = (*IMAGE_CONTENT_TYPES, JSON)
ACCEPT_TYPES = (JSON, RECORD_JSON, BREEDS_ACCEPT)

# HEIF (HEIC) and AVIF files, ISO base media files, begin with this box after its length. Their headers do not
# bound the decoding (a coded picture may be far larger than the size they show), so the endpoint takes none:
# the API converts them, checking what they code first (chalicelib/coded_size.py).
_ISO_MEDIA_BOX = b"ftyp"

# SageMaker forwards InvokeEndpoint's CustomAttributes verbatim in this header.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

RUNTIME_ENV = "DOGBREEDS_RUNTIME"  # one of classifier.runtime.RUNTIMES
THREADS_ENV = "DOGBREEDS_THREADS"

DEFAULT_THRESHOLDS = Thresholds()  # those of an artifact without calibration

_TOP_K_ATTRIBUTE = re.compile(r"(?:^|[\s,;])top_k\s*=\s*([^\s,;]*)", re.IGNORECASE)
_MIN_CONFIDENCE_ATTRIBUTE = re.compile(r"(?:^|[\s,;])min_confidence\s*=\s*([^\s,;]*)", re.IGNORECASE)


try:
    # SageMaker's inference containers ship the toolkit: its errors answer with their own status, any other
    # exception with a 500.
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:

    class _ToolkitError(Exception):
        pass


class RequestError(ValueError, _ToolkitError):
    """The request cannot be answered as sent. `status_code` is the HTTP status the container answers with."""

    status_code = HTTPStatus.BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None):
        ValueError.__init__(self, message)
        # The attributes SageMaker's toolkit answers an error with.
        self.message = message
        self.phrase = HTTPStatus(self.status_code).phrase
        if code:
            self.code = code

    def at(self, index: int) -> RequestError:
        """The same error failing a whole batch, saying which instance it came from (an error answered in
        that instance's own place needs no position)."""
        located = copy.copy(self)
        located.message = f"{self.message} (instance {index} of the request)"
        located.args = (located.message,)
        return located

    def as_answer(self) -> dict:
        """The error as answered in place of a classification (RECORD_JSON)."""
        return {"error": {"code": self.code, "status": int(self.status_code), "message": self.message}}


class UnsupportedContentTypeError(RequestError):
    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_content_type"


class UnsupportedImageError(RequestError):
    """An image in a format the endpoint does not decode (the API's code for such a picture, too)."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class UnsupportedAcceptError(RequestError):
    status_code = HTTPStatus.NOT_ACCEPTABLE
    code = "not_acceptable"


@dataclass(frozen=True)
class Instances:
    """What input_fn decoded: the pictures (RGB, upright) and how to answer them.

    Preprocessing waits for predict_fn, which has the model and so the artifact's own settings. A picture
    that could not be decoded is its RequestError, only when the request asked for errors in place.
    """

    images: list[Image.Image | RequestError]
    is_batch: bool  # a JSON batch answers a list, a single image one object
    top_k: int = DEFAULT_TOP_K
    min_confidence: float = 0.0
    # Asked for the model's breeds (BREEDS_ACCEPT): no pictures, and predict_fn runs no model.
    breeds: bool = False


class BreedPredictor:
    """The loaded model: a runner (ONNX Runtime or PyTorch) with the labels and settings of its artifact."""

    def __init__(
        self, runner: OnnxRunner | TorchRunner, config: dict, labels: list[str], preprocessing: Preprocessing
    ):
        self.runner = runner
        self.labels = labels
        self.preprocessing = preprocessing
        self.model_info = model_identity(config)
        self.thresholds = Thresholds.of(config.get("calibration", {}))

    @property
    def runtime(self) -> str:
        return self.runner.name

    @property
    def device(self) -> str:
        return self.runner.device

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(breed probabilities N x classes, dog probabilities N) for a normalised NCHW batch."""
        breed_logits, dog_probability = self.runner(images)
        return softmax(breed_logits), dog_probability


def default_threads() -> int:
    """The CPUs this process may use, shared among the model server's workers."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS") or 1)
    return max(1, len(os.sched_getaffinity(0)) // workers)


def load_predictor(
    model_dir: str | Path, runtime: str = "auto", threads: int | None = None, device: Device | None = None
) -> BreedPredictor:
    """Load an artifact for inference.

    `runtime` is one of classifier.runtime.RUNTIMES: "auto" (the int8 graph where it qualified, else ONNX
    Runtime when it is installed and its graph agrees with PyTorch, else PyTorch), "onnx", "onnx-int8" (that
    runtime or an error) or "pytorch". `device` defaults to a CUDA device when there is one. Raises ValueError
    for an unknown runtime or a broken artifact.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    config, labels, preprocessing = read_config(model_dir)
    runner = load_runner(model_dir, preprocessing.image_size, runtime, threads, device)
    log.info(
        "loaded %s %s (%s on %s, %d threads)",
        *(config["name"], config["version"], runner.name, runner.device, threads),
    )
    return BreedPredictor(runner, config, labels, preprocessing)


def model_fn(model_dir: str) -> BreedPredictor:
    return load_predictor(model_dir, runtime=os.environ.get(RUNTIME_ENV, "auto"))


def input_fn(body: bytes | str, content_type: str | None, context=None) -> Instances:
    """Decode a request body into `Instances`.

    `context` is the model server's request context, which carries the request's headers: CustomAttributes
    (`top_k=3`, `min_confidence=0.3`) and Accept (RECORD_JSON asks for errors in place). SageMaker's
    toolkit passes TorchServe's (one object per model, its headers replaced for every request) and the local
    endpoint one with the same `request_processor[0].get_request_properties()`. Without a context, or one
    this code cannot read, top_k stays 5, min_confidence 0 and errors raise. (The toolkit counts parameters
    to decide whether to pass the context, so there must be exactly three.)

    Raises UnsupportedContentTypeError for a content type not in CONTENT_TYPES and RequestError for a
    body that is not what its content type says (undecodable image, bad JSON or base64, a bad top_k or
    min_confidence);
    with errors in place, it raises nothing and returns the error in place of the picture(s) instead.
    """
    accept = _media_type(_header(context, "accept"))
    if accept == BREEDS_ACCEPT:
        return Instances([], is_batch=False, breeds=True)
    in_place = accept == RECORD_JSON
    try:
        return _instances(body, content_type, context, in_place)
    except RequestError as error:
        if not in_place:
            raise
        return Instances([error], is_batch=False)


def _instances(body: bytes | str, content_type: str | None, context, in_place: bool) -> Instances:
    media_type = _media_type(content_type)
    options = _answer_options(context)
    if media_type in IMAGE_CONTENT_TYPES:
        data = body.encode() if isinstance(body, str) else body
        return Instances([_decode(data)], is_batch=False, **options)
    if media_type == JSON:
        instances = _json_instances(body)
        if not in_place:
            for index, item in enumerate(instances):
                if isinstance(item, RequestError):
                    raise item.at(index)
        total = sum(_pixels(data) for data in instances if isinstance(data, bytes))
        if total > MAX_REQUEST_PIXELS:
            raise RequestError(
                f"the images hold {total:,} pixels together; at most {MAX_REQUEST_PIXELS:,}",
                "too_many_pixels",
            )
        images = [_decode_in_place(data, index, in_place) for index, data in enumerate(instances)]
        return Instances(images, is_batch=True, **options)
    raise UnsupportedContentTypeError(
        f"unsupported content type {content_type!r}; send one of {', '.join(CONTENT_TYPES)}"
    )


def _decode_in_place(data: bytes | RequestError, index: int, in_place: bool) -> Image.Image | RequestError:
    if isinstance(data, RequestError):
        return data
    try:
        return _decode(data)
    except RequestError as error:
        if not in_place:
            raise error.at(index) from error
        return error


def predict_fn(data: Instances, model: BreedPredictor) -> dict | list[dict]:
    """Run the model and shape the answer: one response object, or a list of them for a JSON batch.

    A RequestError among the pictures is answered in its place by its error object. Asked for the breeds,
    the answer is `breeds_answer`'s.
    """
    if data.breeds:
        return breeds_answer(model)
    pictures = [image for image in data.images if not isinstance(image, RequestError)]
    described = iter([])
    if pictures:
        breed_probabilities, dog_probabilities = model.predict(
            np.stack([model.preprocessing(image) for image in pictures])
        )
        described = iter(
            [
                describe(
                    breed_row,
                    float(dog_probability),
                    model.labels,
                    data.top_k,
                    model.model_info,
                    model.thresholds,
                    data.min_confidence,
                )
                for breed_row, dog_probability in zip(breed_probabilities, dog_probabilities, strict=True)
            ]
        )
    answers = [
        image.as_answer() if isinstance(image, RequestError) else next(described) for image in data.images
    ]
    return answers if data.is_batch else answers[0]


def breeds_answer(model: BreedPredictor) -> dict:
    """The model's breeds in its class order, each its label and display name, and the model itself."""
    return {
        "breeds": [{"label": label, "breed": breed_name(label)} for label in model.labels],
        "model": dict(model.model_info),
    }


def output_fn(prediction: dict | list[dict], accept: str | None) -> bytes:
    """Serialise an answer. Raises UnsupportedAcceptError unless `accept` admits application/json or
    RECORD_JSON."""
    if not _accepts_json(accept):
        raise UnsupportedAcceptError(f"cannot answer as {accept!r}; the answer is {JSON}")
    return json.dumps(prediction).encode()


def describe(
    breed_probabilities: np.ndarray,
    dog_probability: float,
    labels: list[str],
    top_k: int,
    model_info: dict,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    min_confidence: float = 0.0,
) -> dict:
    """The response object for one image: the top_k breeds by probability (those of at least
    `min_confidence`), whether the top one is a confident answer (a confident breed of a confident dog),
    whether it is a dog, the model."""
    best = np.argsort(-breed_probabilities, kind="stable")[: min(top_k, len(labels))]
    top = float(breed_probabilities[best[0]])
    best = [index for index in best if breed_probabilities[index] >= min_confidence]
    return {
        "predictions": [
            {
                "label": labels[index],
                "breed": breed_name(labels[index]),
                "probability": round(float(breed_probabilities[index]), 6),
            }
            for index in best
        ],
        "confident": bool(thresholds.is_confident(top, dog_probability)),
        "is_dog": bool(thresholds.is_dog(dog_probability)),
        "dog_probability": round(dog_probability, 6),
        "model": dict(model_info),
    }


def top_k_from(context) -> int:
    """top_k from the request's CustomAttributes (`top_k=3`, possibly among other attributes), else 5.

    Raises RequestError for a top_k that is not a positive integer.
    """
    attributes = _custom_attributes(context)
    match = _TOP_K_ATTRIBUTE.search(attributes or "")
    if not match:
        return DEFAULT_TOP_K
    value = match.group(1)
    if not value.isdigit() or int(value) < 1:
        raise RequestError(f"top_k must be a positive integer, got {value!r}")
    return int(value)


def min_confidence_from(context) -> float:
    """min_confidence from the request's CustomAttributes (`min_confidence=0.3`), else 0.

    Raises RequestError for a value that is not a number from 0 to 1.
    """
    match = _MIN_CONFIDENCE_ATTRIBUTE.search(_custom_attributes(context) or "")
    if not match:
        return 0.0
    value = match.group(1)
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:  # also refuses nan
        raise RequestError(f"min_confidence must be a number from 0 to 1, got {value!r}")
    return number


def _answer_options(context) -> dict:
    return {"top_k": top_k_from(context), "min_confidence": min_confidence_from(context)}


def _custom_attributes(context) -> str | None:
    return _header(context, CUSTOM_ATTRIBUTES_HEADER)


def _header(context, name: str) -> str | None:
    """A request header from the model server's context (any case), or None."""
    if context is None:
        return None
    try:
        properties = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        log.debug("request context without request properties")
        return None
    wanted = name.lower()
    for key, value in dict(properties).items():
        if str(key).lower() == wanted:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _accepts_json(accept: str | None) -> bool:
    if not accept:
        return True
    ranges = {_media_type(part) for part in accept.split(",")}
    return bool(ranges & {*ACCEPT_TYPES, "application/*", "*/*", ""})


def _json_instances(body: bytes | str) -> list[bytes | RequestError]:
    """The instances' bytes; one that is not `{"b64": ...}` with valid base64 is its RequestError.

    Raises RequestError when the body as a whole is not such a batch."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise RequestError(f"body is not valid JSON: {error}", "invalid_json") from error
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(
            'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]} with one or more'
        )
    if len(instances) > MAX_INSTANCES:
        raise RequestError(f"at most {MAX_INSTANCES} instances per request, got {len(instances)}")
    images: list[bytes | RequestError] = []
    for instance in instances:
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            images.append(RequestError('expected {"b64": "<base64 image>"}'))
            continue
        try:
            images.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError) as error:
            images.append(RequestError(f"invalid base64: {error}", "invalid_base64"))
    return images


def _decode(data: bytes) -> Image.Image:
    if not data:
        raise RequestError("empty image", "empty_image")
    if data[4:8] == _ISO_MEDIA_BOX:
        raise UnsupportedImageError(
            "HEIC and AVIF images are not decoded here; send a JPEG, PNG, WebP or GIF, or send them through "
            "the API, which converts them"
        )
    if (size := _header_size(data)) is not None:
        _check_size(*size)
    try:
        image = open_image(data)
    except UnreadableImageError as error:
        if isinstance(error.__cause__, Image.DecompressionBombError):
            raise RequestError(f"image too large: {error.__cause__}", "too_many_pixels") from error
        # Pillow's other reasons name an in-memory file object, which tells the client nothing.
        raise RequestError(
            "cannot decode the image; send a JPEG, PNG, WebP or GIF", "unreadable_image"
        ) from error
    # A few formats (ICO, ICNS, multi-resolution TIFF) may decode to another size than their header named.
    _check_size(*image.size)
    return image


def _check_size(width: int, height: int) -> None:
    """Refuse an image whose sizes would cost more than any photo: pixels, longest side, aspect ratio."""
    if (pixels := width * height) > MAX_IMAGE_PIXELS:
        raise RequestError(f"image of {pixels:,} pixels; at most {MAX_IMAGE_PIXELS:,}", "too_many_pixels")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise RequestError(
            f"image of {width} x {height}; at most {MAX_IMAGE_SIDE} pixels a side", "too_many_pixels"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise RequestError(
            f"image of {width} x {height}; its longer side may be at most {MAX_ASPECT_RATIO} times "
            "its shorter side",
            "image_too_elongated",
        )


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding; None when unreadable (decoding says why)."""
    if data[4:8] == _ISO_MEDIA_BOX:
        return None  # not even opened: decoding refuses it (and Pillow's AVIF reader raises RuntimeError)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _pixels(data: bytes) -> int:
    size = _header_size(data)
    return size[0] * size[1] if size else 0
