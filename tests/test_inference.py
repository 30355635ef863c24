"""The SageMaker handlers called directly, as the inference toolkit calls them, on real images and model."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import DEFAULT_MODEL, PROJECT
from pictures import claiming_size, in_format
from PIL import Image

from classifier import graph
from classifier.model import ONNX_FILE, load_model, read_config
from serving import contract, inference
from serving.server import RequestContext


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("onnx-cache")
        patch.setenv(graph.CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def predictor(onnx_cache) -> inference.BreedPredictor:
    return inference.load_predictor(DEFAULT_MODEL, runtime="onnx", threads=2)


@pytest.fixture(scope="module")
def torch_predictor() -> inference.BreedPredictor:
    return inference.load_predictor(DEFAULT_MODEL, runtime="pytorch", threads=2)


def classify(predictor, body, content_type=contract.JPEG, context=None, accept=contract.JSON):
    data = inference.input_fn(body, content_type, context)
    return json.loads(inference.output_fn(inference.predict_fn(data, predictor), accept))


def with_custom_attributes(value: str) -> RequestContext:
    return RequestContext({inference.CUSTOM_ATTRIBUTES_HEADER: value})


def test_model_fn_prefers_onnx_runtime(onnx_cache, tmp_path):
    predictor = inference.model_fn(str(DEFAULT_MODEL))
    assert predictor.runtime == "onnxruntime"
    # A model without its graph (one trained with --no-onnx-graph, say) exports it once, for the next start.
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir, ignore=shutil.ignore_patterns("*.onnx"))
    assert inference.model_fn(str(model_dir)).runtime == "onnxruntime"
    assert list(onnx_cache.glob(f"*/{ONNX_FILE}")), "the exported graph is cached for the next start"


def test_labrador_is_labrador_with_the_documented_schema(predictor, labrador):
    answer = classify(predictor, labrador)
    config, labels, _ = read_config(DEFAULT_MODEL)

    assert set(answer) == {"predictions", "confident", "is_dog", "dog_probability", "model"}
    assert answer["model"] == {"name": config["name"], "version": str(config["version"])}
    top = answer["predictions"][0]
    assert top["label"] == "Labrador_retriever"
    assert top["breed"] == "Labrador retriever"
    assert len(answer["predictions"]) == contract.DEFAULT_TOP_K
    probabilities = [prediction["probability"] for prediction in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(prediction["label"] in labels for prediction in answer["predictions"])
    assert answer["is_dog"] is True
    assert answer["dog_probability"] >= predictor.thresholds.dog
    assert answer["confident"] is (
        top["probability"] >= predictor.thresholds.confidence
        and answer["dog_probability"] >= predictor.thresholds.confident_dog
    )


def test_onnx_runtime_and_pytorch_give_the_same_answer(predictor, torch_predictor, labrador, spaniel):
    assert (predictor.runtime, torch_predictor.runtime) == ("onnxruntime", "pytorch")
    for image in (labrador, spaniel):
        fast, reference = classify(predictor, image), classify(torch_predictor, image)
        assert [p["label"] for p in fast["predictions"]] == [p["label"] for p in reference["predictions"]]
        for got, expected in zip(fast["predictions"], reference["predictions"], strict=True):
            assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4)
        assert fast["dog_probability"] == pytest.approx(reference["dog_probability"], abs=1e-4)


def test_is_dog_follows_the_dog_probability(predictor):
    grey = io.BytesIO()
    Image.new("RGB", (300, 200), (128, 128, 128)).save(grey, format="PNG")
    answer = classify(predictor, grey.getvalue(), contract.PNG)
    assert answer["dog_probability"] < predictor.thresholds.dog
    assert answer["is_dog"] is False


def test_thresholds_are_the_artifacts_own(predictor):
    calibration = read_config(DEFAULT_MODEL)[0]["calibration"]
    assert predictor.thresholds == inference.Thresholds(
        confidence=calibration["confidence_threshold"],
        dog=calibration["dog_threshold"],
        confident_dog=calibration["confident_dog_threshold"],
    )


def test_a_confident_answer_needs_a_confident_dog():
    breeds = np.array([0.9, 0.1])
    thresholds = inference.Thresholds(confidence=0.5, dog=0.5, confident_dog=0.8)
    labels, model = ["Schipperke", "Pomeranian"], {"name": "m", "version": "1"}
    answer = inference.describe(breeds, 0.7, labels, 5, model, thresholds)
    assert (answer["is_dog"], answer["confident"]) == (True, False)
    answer = inference.describe(breeds, 0.3, labels, 5, model, thresholds)
    assert (answer["is_dog"], answer["confident"]) == (False, False)
    assert inference.describe(breeds, 0.8, labels, 5, model, thresholds)["confident"] is True
    unsure = np.array([0.45, 0.45])
    assert inference.describe(unsure, 0.99, labels, 5, model, thresholds)["confident"] is False


def test_min_confidence_leaves_out_the_less_likely_breeds(predictor, labrador, spaniel):
    everything = classify(predictor, spaniel, context=with_custom_attributes("top_k=1000"))
    # Halfway between the third and fourth breeds (the answer's probabilities are rounded).
    cut = (everything["predictions"][2]["probability"] + everything["predictions"][3]["probability"]) / 2
    answer = classify(predictor, spaniel, context=with_custom_attributes(f"top_k=1000, min_confidence={cut}"))
    assert answer["predictions"] == everything["predictions"][:3]
    assert answer["confident"] == everything["confident"]
    # Above the top breed's probability nothing is left, and the answer still says how sure it is.
    nothing = classify(predictor, labrador, context=with_custom_attributes("min_confidence=1"))
    if nothing["predictions"]:
        assert nothing["predictions"][0]["probability"] == 1.0
    assert {"confident", "is_dog", "dog_probability"} <= set(nothing)


@pytest.mark.parametrize(
    "value",
    [
        "min_confidence=1.5",
        "min_confidence=-0.1",
        "min_confidence=nan",
        "min_confidence=high",
        "min_confidence=",
    ],
)
def test_bad_min_confidence_is_a_request_error(predictor, labrador, value):
    with pytest.raises(inference.RequestError, match="min_confidence must be a number from 0 to 1"):
        inference.input_fn(labrador, contract.JPEG, with_custom_attributes(value))


def test_png_with_alpha_is_composited_and_classified(predictor, labrador):
    picture = Image.open(io.BytesIO(labrador)).convert("RGBA")
    alpha = Image.new("L", picture.size, 255)
    alpha.paste(0, (0, 0, picture.width, picture.height // 10))  # a transparent strip along the top
    picture.putalpha(alpha)
    png = io.BytesIO()
    picture.save(png, format="PNG")

    answer = classify(predictor, png.getvalue(), contract.PNG)
    assert answer["predictions"][0]["label"] == "Labrador_retriever"


@pytest.mark.parametrize("content_type", contract.IMAGE_CONTENT_TYPES)
def test_every_image_content_type_is_accepted(predictor, labrador, content_type):
    assert classify(predictor, labrador, f"{content_type}; charset=binary")["predictions"][0]["label"] == (
        "Labrador_retriever"
    )


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_heic_and_avif_are_refused_before_decoding_with_where_they_are_taken(format, labrador):
    # Their headers do not bound the decoding: this one shows 64 x 64 and codes 640 x 448. The API checks what
    # they code and converts them; the endpoint takes none.
    data = claiming_size(in_format(Image.new("RGB", (640, 448), (90, 60, 30)), format), 64, 64)
    with pytest.raises(inference.RequestError, match="HEIC and AVIF .* through the API") as raised:
        inference.input_fn(data, contract.OCTET_STREAM)
    assert (raised.value.status_code, raised.value.code) == (415, "unsupported_media_type")
    # In a batch that asks for errors in place, the others keep their answers.
    instances = [{"b64": base64.b64encode(image).decode()} for image in (data, labrador)]
    body = json.dumps({"instances": instances})
    images = inference.input_fn(body, contract.JSON, asking_for_errors_in_place()).images
    assert images[0].as_answer()["error"]["code"] == "unsupported_media_type"
    assert isinstance(images[1], Image.Image)


def test_a_damaged_avif_is_refused_not_a_500():
    # Its primary item is one it does not have: Pillow's own AVIF reader raises RuntimeError on opening it.
    damaged = bytearray(in_format(Image.new("RGB", (64, 64)), "AVIF"))
    at = damaged.index(b"pitm")
    damaged[at + 8 : at + 10] = (99).to_bytes(2, "big")  # after the box's version and flags
    with pytest.raises(inference.UnsupportedImageError):
        inference.input_fn(bytes(damaged), contract.OCTET_STREAM)
    body = json.dumps({"instances": [{"b64": base64.b64encode(damaged).decode()}]})
    with pytest.raises(inference.UnsupportedImageError, match="instance 0 of the request"):
        inference.input_fn(body, contract.JSON)


def test_json_batch_answers_a_list_in_order(predictor, labrador, spaniel):
    body = json.dumps(
        {"instances": [{"b64": base64.b64encode(image).decode()} for image in (spaniel, labrador, spaniel)]}
    )
    answers = classify(predictor, body.encode(), contract.JSON)
    singles = [classify(predictor, image) for image in (spaniel, labrador, spaniel)]

    assert [a["predictions"][0]["label"] for a in answers] == [s["predictions"][0]["label"] for s in singles]
    assert answers[1]["predictions"][0]["label"] == "Labrador_retriever"
    for batch_answer, single in zip(answers, singles, strict=True):
        assert batch_answer["predictions"][0]["probability"] == pytest.approx(
            single["predictions"][0]["probability"], abs=1e-4
        )


def test_json_body_decoded_to_text_by_the_toolkit_works(predictor, labrador):
    # SageMaker's toolkit hands application/json bodies over as str.
    body = json.dumps({"instances": [{"b64": base64.b64encode(labrador).decode()}]})
    assert classify(predictor, body, "application/json; charset=utf-8")[0]["predictions"][0]["label"] == (
        "Labrador_retriever"
    )


def test_top_k_comes_from_custom_attributes(predictor, labrador):
    answer = classify(predictor, labrador, context=with_custom_attributes("trace=abc, Top_K=3"))
    assert len(answer["predictions"]) == 3
    assert answer["predictions"][0]["label"] == "Labrador_retriever"

    everything = classify(predictor, labrador, context=with_custom_attributes("top_k=1000"))
    assert len(everything["predictions"]) == len(predictor.labels)
    assert sum(p["probability"] for p in everything["predictions"]) == pytest.approx(1.0, abs=1e-3)


def test_top_k_defaults_to_5_when_the_context_cannot_tell(predictor, labrador):
    for context in (None, object(), RequestContext({}), with_custom_attributes("something=else")):
        assert len(classify(predictor, labrador, context=context)["predictions"]) == contract.DEFAULT_TOP_K


@pytest.mark.parametrize("value", ["top_k=0", "top_k=three", "top_k=-2", "top_k="])
def test_bad_top_k_is_a_request_error(predictor, labrador, value):
    with pytest.raises(inference.RequestError, match="top_k"):
        inference.input_fn(labrador, contract.JPEG, with_custom_attributes(value))


@pytest.mark.parametrize("content_type", ["text/csv", "image/svg+xml", "", None])
def test_unsupported_content_type_names_it(labrador, content_type):
    with pytest.raises(inference.UnsupportedContentTypeError, match="unsupported content type") as raised:
        inference.input_fn(labrador, content_type)
    assert raised.value.status_code == 415
    assert repr(content_type) in str(raised.value)


def test_url_is_not_fetched(predictor):
    # Endpoints may run network-isolated: a URL is just undecodable bytes here.
    with pytest.raises(inference.RequestError, match="cannot decode the image"):
        inference.input_fn(b"https://example.com/dog.jpg", contract.OCTET_STREAM)
    with pytest.raises(inference.RequestError, match="b64"):
        inference.input_fn(json.dumps({"instances": [{"url": "https://example.com/dog.jpg"}]}), contract.JSON)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"garbage", contract.JPEG, "cannot decode the image"),
        (b"", contract.JPEG, "empty image"),
        (b"\xff\xd8\xff\xe0 truncated", contract.JPEG, "cannot decode the image"),
        (b"{not json", contract.JSON, "not valid JSON"),
        (b"[" * 100_000, contract.JSON, "not valid JSON"),
        (b"[]", contract.JSON, "instances"),
        (b'{"instances": []}', contract.JSON, "instances"),
        (
            b'{"instances": [{"b64": "***"}]}',
            contract.JSON,
            r"^invalid base64.*\(instance 0 of the request\)$",
        ),
        (
            b'{"instances": [{"b64": "Z2FyYmFnZQ=="}]}',
            contract.JSON,
            r"^cannot decode the image.*\(instance 0 of the request\)$",
        ),
        (json.dumps({"instances": [{"b64": ""}] * 65}).encode(), contract.JSON, "at most 64"),
    ],
)
def test_bad_bodies_are_request_errors(body, content_type, message):
    with pytest.raises(inference.RequestError, match=message) as raised:
        inference.input_fn(body, content_type)
    assert raised.value.status_code == 400


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "text/html, application/json;q=0.9"])
def test_output_fn_answers_json(accept):
    assert json.loads(inference.output_fn({"is_dog": True}, accept)) == {"is_dog": True}


def asking_for_errors_in_place() -> RequestContext:
    return RequestContext({"Accept": contract.RECORD_JSON})


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"garbage", contract.JPEG, "unreadable_image"),
        (b"", contract.OCTET_STREAM, "empty_image"),
        (b"{not json", contract.JSON, "invalid_json"),
        (b"a,b", "text/csv", "unsupported_content_type"),
    ],
)
def test_errors_in_place_answer_the_error_instead_of_raising(predictor, body, content_type, code):
    answer = classify(predictor, body, content_type, asking_for_errors_in_place(), contract.RECORD_JSON)
    assert set(answer) == {"error"}
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert answer["error"]["status"] == (415 if code == "unsupported_content_type" else 400)


def test_errors_in_place_leave_the_rest_of_a_batch_its_answers(predictor, labrador, spaniel):
    instances = [
        {"b64": base64.b64encode(labrador).decode()},
        {"b64": base64.b64encode(b"garbage").decode()},
        {"b64": "***"},
        {"url": "https://example.com/dog.jpg"},
        {"b64": base64.b64encode(spaniel).decode()},
    ]
    body = json.dumps({"instances": instances}).encode()
    answers = classify(predictor, body, contract.JSON, asking_for_errors_in_place(), contract.RECORD_JSON)

    assert [answer.get("error", {}).get("code") for answer in answers] == [
        None,
        "unreadable_image",
        "invalid_base64",
        "bad_request",
        None,
    ]
    # Each error stands in its own image's place: its message needs no position, as one image's does not.
    assert answers[1]["error"]["message"] == "cannot decode the image; send a JPEG, PNG, WebP or GIF"
    assert answers[2]["error"]["message"].startswith("invalid base64")
    # A batch of two runs other kernels than one image alone: the same answer, to float precision.
    assert_same_answer(answers[0], classify(predictor, labrador))
    assert_same_answer(answers[4], classify(predictor, spaniel))
    # Asked for plain JSON, the same batch is refused as a whole, as before.
    with pytest.raises(inference.RequestError, match=r"^invalid base64.*\(instance 2 of the request\)$"):
        inference.input_fn(body, contract.JSON)


def assert_same_answer(got: dict, expected: dict) -> None:
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
    assert [p["probability"] for p in got["predictions"]] == pytest.approx(
        [p["probability"] for p in expected["predictions"]], abs=1e-5
    )
    assert got["dog_probability"] == pytest.approx(expected["dog_probability"], abs=1e-5)
    assert (got["is_dog"], got["model"]) == (expected["is_dog"], expected["model"])


def test_output_fn_refuses_other_accept_types():
    with pytest.raises(inference.UnsupportedAcceptError, match="text/csv") as raised:
        inference.output_fn({"is_dog": True}, "text/csv")
    assert raised.value.status_code == 406


def test_a_stale_shipped_graph_is_refused(tmp_path, labrador):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    model, _, _, preprocessing = load_model(model_dir)
    with torch.no_grad():
        model.breed_head.bias.add_(torch.linspace(-3, 3, model.breed_head.bias.numel()))  # other weights
    graph.export_onnx(model, model_dir / ONNX_FILE, preprocessing.image_size)

    with pytest.raises(ValueError, match="disagrees with the PyTorch model"):
        inference.load_predictor(model_dir, runtime="onnx", threads=1)
    fallback = inference.load_predictor(model_dir, runtime="auto", threads=1)
    assert fallback.runtime == "pytorch"
    assert classify(fallback, labrador)["predictions"][0]["label"] == "Labrador_retriever"


def test_a_shipped_graph_that_agrees_is_used(tmp_path, labrador, onnx_cache):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    model, _, _, preprocessing = load_model(model_dir)
    graph.export_onnx(model, model_dir / ONNX_FILE, preprocessing.image_size)

    predictor = inference.load_predictor(model_dir, runtime="onnx", threads=1)
    assert predictor.runner.path == model_dir / ONNX_FILE
    assert classify(predictor, labrador)["predictions"][0]["label"] == "Labrador_retriever"


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="unknown runtime"):
        inference.load_predictor(DEFAULT_MODEL, runtime="tensorrt")


def test_auto_falls_back_to_pytorch_when_the_graph_cannot_be_cached(tmp_path, monkeypatch, labrador):
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    monkeypatch.setenv(graph.CACHE_ENV, str(not_a_directory))
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir, ignore=shutil.ignore_patterns("*.onnx"))

    with pytest.raises(OSError):
        inference.load_predictor(model_dir, runtime="onnx", threads=1)
    fallback = inference.load_predictor(model_dir, runtime="auto", threads=1)
    assert fallback.runtime == "pytorch"
    assert classify(fallback, labrador)["predictions"][0]["label"] == "Labrador_retriever"


def solid_png(width: int, height: int) -> bytes:
    png = io.BytesIO()
    Image.new("L", (width, height), 90).save(png, format="PNG")
    return png.getvalue()


def test_an_image_with_too_many_pixels_is_refused_before_decoding():
    side = int(inference.MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(inference.RequestError, match="pixels; at most"):
        inference.input_fn(solid_png(side, side), contract.PNG)


# The probe's amplification cases: a few hundred bytes of PNG each, whose short side the resize would scale
# up with no bound on the long side (8000 x 2 cost about 1 GB; 65000 x 1 would need about 17 GB).
@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (8000, 2, "at most 20 times"),
        (2, 8000, "at most 20 times"),
        (65000, 1, "at most 16384 pixels a side"),
        (contract.MAX_ASPECT_RATIO * 30 + 1, 30, "at most 20 times"),
        (contract.MAX_IMAGE_SIDE + 1, 1000, "at most 16384 pixels a side"),
    ],
)
def test_extreme_dimensions_are_refused_before_decoding(width, height, message):
    png = solid_png(width, height)
    assert len(png) < 50_000  # a small body, whatever it decodes to
    with pytest.raises(inference.RequestError, match=message) as raised:
        inference.input_fn(png, contract.PNG)
    assert raised.value.status_code == 400
    batch = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]})
    with pytest.raises(
        inference.RequestError, match=rf"^image of .*{message}.*\(instance 0 of the request\)$"
    ):
        inference.input_fn(batch, contract.JSON)


def test_the_most_extreme_allowed_shape_is_answered(predictor):
    # Exactly 20:1 passes, and its answer costs no more than any photo's.
    strip = Image.new("RGB", (contract.MAX_ASPECT_RATIO * 13, 13), (120, 90, 60))
    png = io.BytesIO()
    strip.save(png, format="PNG")
    answer = classify(predictor, png.getvalue(), contract.PNG)
    assert len(answer["predictions"]) == 5


def test_a_batch_with_too_many_pixels_together_is_refused():
    # Each image is allowed alone; together they are not.
    side = int((inference.MAX_REQUEST_PIXELS / 3) ** 0.5) + 1
    assert side * side <= inference.MAX_IMAGE_PIXELS
    instance = {"b64": base64.b64encode(solid_png(side, side)).decode()}
    with pytest.raises(inference.RequestError, match="pixels together"):
        inference.input_fn(json.dumps({"instances": [instance] * 3}), contract.JSON)


def test_a_decompression_bomb_is_refused_as_too_large():
    # A PNG whose header claims 30000 x 30000 pixels: Pillow refuses it before decoding a single row.
    png = solid_png(1, 1)
    header = (30000).to_bytes(4, "big") * 2 + png[24:29]
    bomb = png[:16] + header + zlib.crc32(b"IHDR" + header).to_bytes(4, "big") + png[33:]
    with pytest.raises(inference.RequestError, match="image too large"):
        inference.input_fn(bomb, contract.PNG)


def test_model_fn_follows_the_runtime_setting(monkeypatch):
    monkeypatch.setenv(inference.RUNTIME_ENV, "pytorch")
    assert inference.model_fn(str(DEFAULT_MODEL)).runtime == "pytorch"


def test_export_command_writes_a_graph_the_handlers_use(tmp_path, labrador):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    result = subprocess.run(
        [sys.executable, "-m", "training.export", "--model-dir", str(model_dir)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max probability gap to PyTorch" in result.stdout
    predictor = inference.load_predictor(model_dir, runtime="onnx", threads=1)
    assert predictor.runner.path == model_dir / ONNX_FILE
    assert classify(predictor, labrador)["predictions"][0]["label"] == "Labrador_retriever"


# SageMaker's PyTorch inference container: TorchServe turns each HTTP request into a batch entry and puts its
# headers into the one request context of the model, and the SageMaker inference toolkit's Transformer runs
# this module's handlers on them.
@dataclass
class Toolkit:
    transformer: object
    context: object

    def invoke(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        from ts.service import Service

        request = {
            "requestId": b"0",
            "parameters": [{"name": "body", "contentType": headers["Content-Type"].encode(), "value": body}],
            "headers": [{"name": name.encode(), "value": value.encode()} for name, value in headers.items()],
        }
        # What TorchServe's Service.predict does for every batch before calling the handler service.
        request_headers, batch, _ = Service.retrieve_data_for_inference([request])
        self.context.request_processor = request_headers
        [answer] = self.transformer.transform(batch, self.context)
        answer = answer.encode() if isinstance(answer, str) else answer
        return self.context.request_processor[0].get_response_status_code(), answer


@pytest.fixture(scope="module")
def toolkit(onnx_cache):
    from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
    from sagemaker_inference.transformer import Transformer
    from ts.context import Context

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_PROGRAM", "serving.inference")
        yield Toolkit(
            Transformer(default_inference_handler=DefaultInferenceHandler()),
            Context("dogbreeds", str(DEFAULT_MODEL), {}, 1, None, "0.12.0"),
        )


def test_sagemaker_toolkit_runs_the_handlers(toolkit, labrador, spaniel):
    status, body = toolkit.invoke(labrador, {"Content-Type": contract.JPEG, "Accept": "*/*"})
    assert status == 200
    assert json.loads(body)["predictions"][0]["label"] == "Labrador_retriever"

    batch = json.dumps(
        {"instances": [{"b64": base64.b64encode(image).decode()} for image in (spaniel, labrador)]}
    )
    status, body = toolkit.invoke(batch.encode(), {"Content-Type": contract.JSON})
    assert status == 200
    assert [answer["predictions"][0]["label"] for answer in json.loads(body)][1] == "Labrador_retriever"


def test_sagemaker_toolkit_passes_custom_attributes_to_top_k(toolkit, labrador):
    headers = {"Content-Type": contract.JPEG, inference.CUSTOM_ATTRIBUTES_HEADER: "top_k=2"}
    status, body = toolkit.invoke(labrador, headers)
    assert status == 200
    assert len(json.loads(body)["predictions"]) == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status"), [(b"garbage", contract.JPEG, 400), (b"a,b", "text/csv", 415)]
)
def test_sagemaker_toolkit_answers_request_errors_with_their_status(toolkit, body, content_type, status):
    answered, message = toolkit.invoke(body, {"Content-Type": content_type})
    assert answered == status
    assert message.startswith(b"cannot decode the image" if status == 400 else b"unsupported content type")


def test_sagemaker_toolkit_answers_a_bad_record_in_place_as_batch_transform_asks(toolkit, labrador):
    """A transform job sends each object with the job's ContentType and Accept: a bad one answers 200."""
    headers = {"Content-Type": contract.JPEG, "Accept": contract.RECORD_JSON}
    status, body = toolkit.invoke(b"not a photo", headers)
    assert status == 200
    assert json.loads(body)["error"]["code"] == "unreadable_image"
    status, body = toolkit.invoke(labrador, headers)
    assert status == 200 and json.loads(body)["predictions"][0]["label"] == "Labrador_retriever"
