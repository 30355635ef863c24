"""CORS: each stage's one allowed origin (CORS_ALLOW_ORIGIN in .chalice/config.json), answered on every
route and its preflight, in the packaged API (Chalice's swagger and our gateway responses) and, for real, in
headless Chromium: a tiny page served from another origin (another port on 127.0.0.1) calls a real
`chalice local` in front of the real endpoint with fetch(), and gets the answer when its origin is allowed,
and is blocked when it is not."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys

import pytest
from conftest import LABRADOR, PROJECT, ChaliceLocal
from local_servers import serving_in_thread

from chalicelib.settings import ConfigurationError, parse_cors_origin
from scripts import merge_template

CONFIG = json.loads((PROJECT / ".chalice" / "config.json").read_text())
# What the page runs: the API's answer (status, body, the headers a page may read), or why it got none.
PAGE = b"""<!doctype html>
<html><head><title>another origin</title><script>
async function callApi(url, options) {
  try {
    const response = await fetch(url, options);
    return {status: response.status, body: await response.text(),
            retryAfter: response.headers.get("Retry-After")};
  } catch (error) {
    return {blocked: String(error)};
  }
}
</script></head><body>a web app on another origin</body></html>
"""


# --- the setting ---


def stage_origin(stage: str) -> str | None:
    environment = {
        **CONFIG.get("environment_variables", {}),
        **CONFIG["stages"][stage].get("environment_variables", {}),
    }
    return parse_cors_origin(environment.get("CORS_ALLOW_ORIGIN", ""))


def test_each_stage_names_the_origin_it_allows():
    # Any on local (`make run`); any on dev, which has no key and no cookies for CORS to guard; none on prod
    # until an operator names the web app's origin.
    assert {stage: stage_origin(stage) for stage in CONFIG["stages"]} == {
        "local": "*",
        "dev": "*",
        "prod": None,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("*", "*"),
        ("https://app.example.com", "https://app.example.com"),
        ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
    ],
)
def test_an_origin_or_any_is_accepted(value, expected):
    assert parse_cors_origin(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://a.example.com,https://b.example.com",
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com:port",
        "null",
    ],
)
def test_anything_else_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError, match="one origin"):
        parse_cors_origin(value)


# --- what is packaged ---


def swagger(**environment: str) -> dict:
    """The API definition Chalice packages for app.py imported with `environment` (as `chalice package` does
    with the stage's)."""
    code = (
        "import json, app; from chalice.deploy.swagger import CFNSwaggerGenerator; "
        "print(json.dumps(CFNSwaggerGenerator().generate_swagger(app.app)))"
    )
    env = {**os.environ, "ENDPOINT_NAME": "dogbreeds-test", **environment}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_with_an_origin_every_route_answers_its_preflight_without_a_key():
    origin = "https://app.example.com"
    paths = swagger(CORS_ALLOW_ORIGIN=origin, API_KEY_REQUIRED="true")["paths"]
    for path, operations in paths.items():
        preflight = operations["options"]
        # API Gateway answers it itself (a mock): no Lambda call, and no key, which browsers never send there.
        assert preflight["x-amazon-apigateway-integration"]["type"] == "mock", path
        assert "security" not in preflight, path
        headers = preflight["x-amazon-apigateway-integration"]["responses"]["default"]["responseParameters"]
        assert headers["method.response.header.Access-Control-Allow-Origin"] == f"'{origin}'", path
        allowed = headers["method.response.header.Access-Control-Allow-Headers"].strip("'").lower().split(",")
        assert {"x-api-key", "content-type"} <= set(allowed), path
        methods = headers["method.response.header.Access-Control-Allow-Methods"].strip("'").split(",")
        assert set(methods) == {method.upper() for method in operations}, path


def test_without_an_origin_no_route_answers_a_preflight():
    paths = swagger(CORS_ALLOW_ORIGIN="")["paths"]
    assert all("options" not in operations for operations in paths.values())


def test_api_gateways_own_errors_carry_the_stages_origin():
    origin = "https://app.example.com"
    for response in merge_template.gateway_responses(origin).values():
        headers = response["responseParameters"]
        assert headers["gatewayresponse.header.Access-Control-Allow-Origin"] == f"'{origin}'"
        assert "Retry-After" in headers["gatewayresponse.header.Access-Control-Expose-Headers"]
    for response in merge_template.gateway_responses(None).values():
        assert not any("Access-Control" in header for header in response["responseParameters"])
    for stage in ("dev", "prod"):
        responses = merge_template.merge_template(stage)["Resources"]["RestAPI"]["Properties"]
        throttled = responses["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]["THROTTLED"]
        found = throttled["responseParameters"].get("gatewayresponse.header.Access-Control-Allow-Origin")
        assert found == (f"'{stage_origin(stage)}'" if stage_origin(stage) else None), stage


# --- in a real browser ---


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pages():
    """Two origins serving the page: (allowed, other)."""
    with (
        serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)) as allowed,
        serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)) as other,
    ):
        yield allowed, other


@pytest.fixture(scope="module")
def api_allowing(endpoint, pages, tmp_path_factory):
    """`chalice local` whose stage allows the first page's origin only."""
    api = ChaliceLocal(
        tmp_path_factory.mktemp("cors-api"), endpoint.url, CORS_ALLOW_ORIGIN=pages[0]
    ).wait_ready()
    yield api
    api.stop()


def call_from(driver, page_url: str, url: str, method: str = "GET", body: str | None = None) -> dict:
    """fetch() of `url` from the page at `page_url`, with the headers that make it need a preflight."""
    driver.get(page_url)
    driver.set_script_timeout(60)
    options = {"method": method, "headers": {"Content-Type": "application/json", "x-api-key": "a-key"}}
    if body is not None:
        options["body"] = body
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; callApi(arguments[0], arguments[1]).then(done);",
        url,
        options,
    )


def test_a_page_of_the_allowed_origin_gets_the_answer(browser, pages, api_allowing, sample_files):
    allowed, _ = pages
    body = json.dumps({"url": f"{sample_files}/{LABRADOR}", "top_k": 3})
    result = call_from(browser, allowed, api_allowing.url + "/predict", "POST", body)
    assert result.get("status") == 200, result
    assert json.loads(result["body"])["predictions"][0]["label"] == "Labrador_retriever"
    # The API's own errors and the other routes answer it too.
    result = call_from(browser, allowed, api_allowing.url + "/predict", "POST", "{not json")
    assert result.get("status") == 400 and json.loads(result["body"])["error"]["code"] == "invalid_json"
    result = call_from(browser, allowed, api_allowing.url + "/breeds")
    assert result.get("status") == 200 and json.loads(result["body"])["breeds"], result


def test_the_browser_blocks_a_page_of_another_origin(browser, pages, api_allowing, sample_files):
    _, other = pages
    body = json.dumps({"url": f"{sample_files}/{LABRADOR}"})
    result = call_from(browser, other, api_allowing.url + "/predict", "POST", body)
    assert "status" not in result and "Failed to fetch" in result["blocked"], result
    result = call_from(browser, other, api_allowing.url + "/breeds")
    assert "status" not in result, result


def test_the_local_stage_answers_a_page_of_any_origin(browser, pages, api_stack, sample_files):
    _, other = pages
    body = json.dumps({"url": f"{sample_files}/{LABRADOR}", "top_k": 1})
    result = call_from(browser, other, api_stack.url + "/predict", "POST", body)
    assert result.get("status") == 200, result
    assert json.loads(result["body"])["predictions"][0]["label"] == "Labrador_retriever"
