"""dogbreeds API: the routes and the Lambda function; the work is in chalicelib (see image_request.py)."""

from chalice import Chalice, CORSConfig, Response

from chalicelib import batch_request, image_request, observability
from chalicelib.breeds import breeds_answer
from chalicelib.errors import answers_errors, lambda_error, reshape_chalice_error
from chalicelib.health import health_answer
from chalicelib.openapi import describe_api, stage_base_path
from chalicelib.settings import (
    CORS_EXPOSE_HEADERS,
    CORS_MAX_AGE_S,
    UPLOAD_CONTENT_TYPES,
    api_key_required,
    cors_allow_origin,
    get_settings,
)
from chalicelib.webpage import render_page

app = Chalice(app_name="dogbreeds")
# Routes that pass KEYED need an API key on stages that set API_KEY_REQUIRED (prod); a public route omits it.
KEYED = api_key_required()

# Every route answers browsers of the stage's one allowed origin (CORS_ALLOW_ORIGIN, none when unset), the
# preflight (OPTIONS) included; CORSConfig always allows the x-api-key and Content-Type request headers, and
# a page may read Retry-After. Set before the routes, which take it as their default.
ALLOWED_ORIGIN = cors_allow_origin()
if ALLOWED_ORIGIN:
    app.api.cors = CORSConfig(
        allow_origin=ALLOWED_ORIGIN, expose_headers=list(CORS_EXPOSE_HEADERS), max_age=CORS_MAX_AGE_S
    )

# API Gateway passes these bodies to the Lambda base64-encoded instead of mangling them as text.
for content_type in UPLOAD_CONTENT_TYPES:
    if content_type not in app.api.binary_types:
        app.api.binary_types.append(content_type)


# Registered first, so it is the outermost middleware and logs the answer as the client gets it.
app.register_middleware(observability.http_middleware, "http")
app.register_middleware(observability.lambda_middleware, "pure_lambda")


@app.middleware("http")
def project_error_shape(event, get_response):
    content_type = event.headers.get("content-type")
    return reshape_chalice_error(get_response(event), content_type, UPLOAD_CONTENT_TYPES)


@app.route("/", methods=["GET"])
@answers_errors
def page():
    """The web page to try the API in a browser; public on every stage, like /openapi.json."""
    html, headers = render_page(get_settings().model_resize_size, UPLOAD_CONTENT_TYPES)
    return Response(body=html, headers=headers)


@app.route("/predict", methods=["POST"], content_types=["application/json"], api_key_required=KEYED)
@answers_errors
def predict():
    """{"url": "https://..."} or {"image": "<base64>"}, optional "top_k" and "min_confidence"."""
    request = image_request.parse_json_body(app.current_request.raw_body)
    return image_request.http_answer(image_request.classify(request), _base_path())


@app.route(
    "/predict/image", methods=["POST"], content_types=list(UPLOAD_CONTENT_TYPES), api_key_required=KEYED
)
@answers_errors
def predict_image():
    """The image's raw bytes as the body; optional ?top_k=N&min_confidence=P."""
    query = app.current_request.query_params or {}
    top_k = image_request.parse_top_k_text(query.get("top_k"))
    min_confidence = image_request.parse_min_confidence_text(query.get("min_confidence"))
    request = image_request.upload_request(app.current_request.raw_body, top_k, min_confidence)
    return image_request.http_answer(image_request.classify(request), _base_path())


@app.route("/predict/results/{inference_id}", methods=["GET"], api_key_required=KEYED)
@answers_errors
def predict_result(inference_id):
    """An async stage's answer to a queued photo (POST /predict's 202 gives this route as result_url)."""
    return image_request.result_http_answer(inference_id)


def _base_path() -> str:
    return stage_base_path(app.current_request.context)


@app.route("/openapi.json", methods=["GET"])
@answers_errors
def openapi():
    """This API described in OpenAPI 3.1."""
    return describe_api(app.routes, stage_base_path(app.current_request.context))


@app.route("/breeds", methods=["GET"])
@answers_errors
def breeds():
    """The model's breeds (label and display name) and its name and version; public, like /openapi.json."""
    body, headers = breeds_answer()
    return Response(body=body, headers=headers)


@app.route("/predict/batch", methods=["POST"], content_types=["application/json"], api_key_required=KEYED)
@answers_errors
def predict_batch():
    """{"images": ["<base64>", ...], "urls": ["https://...", ...]}, optional "top_k": one result per item."""
    return batch_request.classify_batch(batch_request.parse_batch_body(app.current_request.raw_body))


@app.route("/health", methods=["GET"], api_key_required=KEYED)
@answers_errors
def health():
    """200 when the stage's endpoint can answer, 503 when not (checked without a model call, cached)."""
    status, body, headers = health_answer()
    return Response(body=body, status_code=status, headers=headers)


@app.lambda_function(name="classify")
def classify(event, context):
    """A direct invocation with {"url": ...} or {"image": "<base64>"}, or a batch with {"images": [...]}
    and/or {"urls": [...]}: the REST answer, or {"error": ...}."""
    try:
        if batch_request.is_batch(event):
            return batch_request.classify_batch(batch_request.parse_batch_fields(event))
        return image_request.classify(image_request.parse_fields(event))
    except Exception as exception:  # noqa: BLE001 - a raise would hand the caller a stack trace
        return lambda_error(exception)
