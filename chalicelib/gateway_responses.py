"""What API Gateway answers itself, before a request reaches the function, in the API's error shape
{"error": {"code", "message"}}: the packaged template maps its gateway responses to these
(scripts/merge_template.py) and /openapi.json lists them beside the routes' own errors (openapi.py)."""

from __future__ import annotations

# (response type, status, code, message). Types left out fall back to DEFAULT_4XX/DEFAULT_5XX, which keep
# API Gateway's status and message.
GATEWAY_RESPONSES = [
    ("MISSING_AUTHENTICATION_TOKEN", 404, "not_found", "no such route: check the method and path"),
    ("RESOURCE_NOT_FOUND", 404, "not_found", "no such route: check the method and path"),
    ("INVALID_API_KEY", 403, "api_key_invalid", "this API needs a valid API key in the x-api-key header"),
    ("ACCESS_DENIED", 403, "forbidden", "access denied"),
    ("THROTTLED", 429, "throttled", "too many requests: slow down and retry later"),
    ("QUOTA_EXCEEDED", 429, "quota_exceeded", "this API key's daily quota is used up"),
    ("REQUEST_TOO_LARGE", 413, "payload_too_large", "the request is over API Gateway's 10 MB limit"),
    ("UNSUPPORTED_MEDIA_TYPE", 415, "unsupported_media_type", "unsupported Content-Type"),
    ("INTEGRATION_TIMEOUT", 504, "timeout", "the request took too long"),
    ("INTEGRATION_FAILURE", 502, "internal_error", "an internal error occurred"),
    ("DEFAULT_4XX", None, "bad_request", None),
    ("DEFAULT_5XX", None, "internal_error", None),
]
# Answered for a route that needs an API key (only there).
KEY_RESPONSE_TYPES = ("INVALID_API_KEY", "ACCESS_DENIED")
# Answered only for a request with a body.
BODY_RESPONSE_TYPES = ("REQUEST_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE")
