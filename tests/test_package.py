"""What `chalice package` builds for the deployed stages: the template, the role, the zip, checked for real
(the real CLI, cfn-lint, and the wheels chalice picked for the Lambda platform)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import PROJECT

BIN = Path(sys.executable).parent
CONFIG = json.loads((PROJECT / ".chalice" / "config.json").read_text())
DEPLOYED_STAGES = ["dev", "prod"]
ALLOWED_ACTIONS = {
    "sagemaker:InvokeEndpoint",
    "sagemaker:DescribeEndpoint",
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}
# X-Ray's actions have no resource-level permissions: "*" is the only resource they take.
XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# boto3 comes with the Lambda runtime; the rest belongs to training and would break the 250 MB limit.
# aws_xray_sdk would bring its own botocore (see chalicelib/observability.py).
NEVER_SHIPPED = ("torch", "training", "numpy", "boto3", "botocore", "onnxruntime", "aws_xray_sdk")


def stage_environment(stage: str) -> dict[str, str]:
    return {
        **CONFIG.get("environment_variables", {}),
        **CONFIG["stages"][stage].get("environment_variables", {}),
    }


@pytest.fixture(scope="module", params=DEPLOYED_STAGES)
def package(request, tmp_path_factory) -> tuple[str, dict, Path]:
    """(stage, template, zip) from `chalice package --stage STAGE`, run on a copy of the project's sources."""
    stage = request.param
    project = tmp_path_factory.mktemp(f"project-{stage}")
    shutil.copy(PROJECT / "app.py", project)
    shutil.copy(PROJECT / "requirements.txt", project)
    shutil.copytree(
        PROJECT / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(PROJECT / ".chalice", project / ".chalice", ignore=shutil.ignore_patterns("deployments"))
    output = project / "out"
    # What `make package` does: the stage's merge template, then chalice package with it.
    merge = project / "merge.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.merge_template",
            "--stage",
            stage,
            "--output",
            str(merge),
        ],
        cwd=PROJECT,
        check=True,
        timeout=60,
    )
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", stage, "--merge-template", str(merge), str(output)],
        cwd=project,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return stage, json.loads((output / "sam.json").read_text()), output / "deployment.zip"


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_every_function_has_reserved_concurrency_memory_and_timeout(package):
    stage, template, _ = package
    functions = resources(template, "AWS::Serverless::Function")
    assert {f["Properties"]["Handler"] for f in functions.values()} == {"app.app", "app.classify"}
    for function in functions.values():
        properties = function["Properties"]
        assert properties["ReservedConcurrentExecutions"] == CONFIG["stages"][stage]["reserved_concurrency"]
        assert properties["MemorySize"] >= 1024
        assert properties["Runtime"] == "python3.11"
    api_handler = next(f for f in functions.values() if f["Properties"]["Handler"] == "app.app")
    # API Gateway gives up after 29 s; a longer Lambda would keep working for nobody.
    assert api_handler["Properties"]["Timeout"] < 29


def test_dev_keeps_the_seeds_concurrency_of_two():
    assert CONFIG["stages"]["dev"]["reserved_concurrency"] == 2


def test_functions_get_the_stage_environment_and_no_local_overrides(package):
    stage, template, _ = package
    for function in resources(template, "AWS::Serverless::Function").values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables["ENDPOINT_NAME"] == f"dogbreeds-{stage}"
        assert variables["STAGE"] == stage
        assert variables["ALLOW_LOOPBACK_FETCH"] == "false"
        assert variables["UNSIGNED_ENDPOINT_REQUESTS"] == "false"
        assert "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME" not in variables


@pytest.mark.parametrize("setting", ["ALLOW_LOOPBACK_FETCH", "UNSIGNED_ENDPOINT_REQUESTS"])
def test_only_the_local_stage_relaxes(setting):
    for stage in CONFIG["stages"]:
        assert (stage_environment(stage)[setting] == "true") is (stage == "local")


def test_roles_allow_only_invoking_the_stage_endpoint_and_writing_own_logs(package):
    stage, template, _ = package
    roles = resources(template, "AWS::IAM::Role")
    functions = resources(template, "AWS::Serverless::Function")
    assert len(roles) == len(functions)
    own_log_groups = {f"/aws/lambda/dogbreeds-{stage}", f"/aws/lambda/dogbreeds-{stage}-classify"}
    for role in roles.values():
        properties = role["Properties"]
        assert "ManagedPolicyArns" not in properties
        statements = [s for policy in properties["Policies"] for s in policy["PolicyDocument"]["Statement"]]
        for statement in statements:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            assert set(actions) <= ALLOWED_ACTIONS
            if set(actions) & XRAY_ACTIONS:
                assert set(actions) <= XRAY_ACTIONS and targets == ["*"]
                continue
            for target in targets:
                if actions in (["sagemaker:InvokeEndpoint"], ["sagemaker:DescribeEndpoint"]):
                    assert target == f"arn:aws:sagemaker:*:*:endpoint/dogbreeds-{stage}"
                else:
                    assert all(a.startswith("logs:") for a in actions)
                    log_group = target.split(":log-group:", 1)[1].removesuffix(":log-stream:*")
                    assert log_group in own_log_groups
        invoke = [s for s in statements if s["Action"] == "sagemaker:InvokeEndpoint"]
        assert len(invoke) == 1


def test_api_gateway_passes_image_uploads_as_binary(package):
    _, template, _ = package
    (api,) = resources(template, "AWS::Serverless::Api").values()
    binary_types = api["Properties"]["DefinitionBody"]["x-amazon-apigateway-binary-media-types"]
    assert {"image/jpeg", "image/png", "image/webp", "application/octet-stream"} <= set(binary_types)
    assert {"image/heic", "image/heif", "image/avif"} <= set(binary_types)
    assert "application/json" not in binary_types


def test_template_passes_cfn_lint(package):
    _, template, bundle = package
    path = bundle.parent / "sam.json"
    result = subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zip_holds_the_manylinux_pillow_and_nothing_heavy(package):
    _, _, bundle = package
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        wheels = {
            name.split("/")[0]: archive.read(name).decode()
            for name in names
            if name.endswith(".dist-info/WHEEL")
        }
    tops = {name.split("/")[0] for name in names}
    assert {"app.py", "chalicelib", "PIL", "pi_heif", "requests", "aws_lambda_powertools"} <= tops
    # The web page at / is read from these files at run time.
    assert {f"chalicelib/static/{name}" for name in ("index.html", "page.css", "page.js")} <= set(names)
    assert not tops & set(NEVER_SHIPPED), tops & set(NEVER_SHIPPED)
    pillow = wheels["pillow-12.2.0.dist-info"]
    # A Pillow that chalice compiled here would be tagged linux_x86_64 and link this machine's libraries.
    assert "Tag: cp311-cp311-manylinux2014_x86_64" in pillow
    assert any(name.startswith("pillow.libs/") for name in names)  # the libraries auditwheel bundled
    # HEIC's decoder: libheif and libde265, bundled in the wheel; the encoders of pillow-heif stay out.
    assert "Tag: cp311-cp311-manylinux2014_x86_64" in wheels["pi_heif-1.0.0.dist-info"]
    assert any(name.startswith("pi_heif.libs/libheif") for name in names)
    assert "pillow_heif" not in tops
    for name, wheel in wheels.items():
        tags = [line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
        assert all(tag.endswith("-any") or "manylinux" in tag for tag in tags), (name, tags)
    assert bundle.stat().st_size < 50 * 1024 * 1024  # Lambda's limit for a directly uploaded zip


def test_api_side_imports_neither_torch_nor_training():
    code = (
        "import sys, app\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'training', 'numpy', 'onnxruntime'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- authentication, throttling, gateway responses, tracing and alarms (scripts/merge_template.py) ---

# The routes that stay public on every stage: the web page, the API's description and the model's breeds.
PUBLIC_ROUTES = {("/", "get"), ("/openapi.json", "get"), ("/breeds", "get")}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def rest_api(template: dict) -> dict:
    (api,) = resources(template, "AWS::Serverless::Api").values()
    return api["Properties"]


def operations(template: dict) -> dict[tuple[str, str], dict]:
    paths = rest_api(template)["DefinitionBody"]["paths"]
    return {
        (path, method): op
        for path, ops in paths.items()
        for method, op in ops.items()
        if method in HTTP_METHODS
    }


def test_only_prod_requires_api_keys():
    for stage in CONFIG["stages"]:
        assert (stage_environment(stage)["API_KEY_REQUIRED"] == "true") is (stage == "prod")


def test_prod_routes_need_an_api_key_and_dev_routes_do_not(package):
    stage, template, _ = package
    body = rest_api(template)["DefinitionBody"]
    keyed = {route for route, op in operations(template).items() if op.get("security") == [{"api_key": []}]}
    assert {("/predict", "post"), ("/predict/image", "post"), ("/health", "get")} <= set(operations(template))
    if stage == "prod":
        assert body["securityDefinitions"]["api_key"] == {
            "type": "apiKey",
            "name": "x-api-key",
            "in": "header",
        }
        # A stage that allows a web origin also has preflights (OPTIONS), which browsers send without a key.
        routes = {route for route in operations(template) if route[1] != "options"}
        assert keyed == routes - PUBLIC_ROUTES
    else:
        assert keyed == set() and "securityDefinitions" not in body


def test_a_keyed_stage_has_a_key_and_a_usage_plan_with_rate_burst_and_quota(package):
    stage, template, _ = package
    plans = resources(template, "AWS::ApiGateway::UsagePlan")
    keys = resources(template, "AWS::ApiGateway::ApiKey")
    links = resources(template, "AWS::ApiGateway::UsagePlanKey")
    if stage != "prod":
        assert not plans and not keys and not links
        return
    ((plan_id, plan),) = plans.items()
    ((key_id, key),) = keys.items()
    ((link,),) = [list(links.values())]
    properties = plan["Properties"]
    assert properties["ApiStages"] == [{"ApiId": {"Ref": "RestAPI"}, "Stage": {"Ref": "RestAPI.Stage"}}]
    throttle, quota = properties["Throttle"], properties["Quota"]
    assert 0 < throttle["RateLimit"] <= throttle["BurstLimit"]
    assert quota["Period"] == "DAY" and quota["Limit"] > 0
    stage_limits = rest_api(template)["MethodSettings"][0]
    # One key may not take the whole stage.
    assert throttle["RateLimit"] < stage_limits["ThrottlingRateLimit"]
    assert key["Properties"]["Enabled"] is True
    assert link["Properties"] == {
        "KeyId": {"Ref": key_id},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_id},
    }
    assert template["Outputs"]["ApiKeyId"] == {"Value": {"Ref": key_id}}


def test_every_stage_is_throttled_as_a_whole(package):
    stage, template, _ = package
    (settings,) = rest_api(template)["MethodSettings"]
    assert settings["ResourcePath"] == "/*" and settings["HttpMethod"] == "*"
    assert 0 < settings["ThrottlingRateLimit"] <= settings["ThrottlingBurstLimit"]
    # More than API Gateway's account default (10,000 rps) would be no limit at all.
    assert settings["ThrottlingRateLimit"] < 1000


def render(template_text: str, message: str) -> dict:
    """A gateway response body as API Gateway writes it: $context.error.messageString is a quoted string."""
    return json.loads(template_text.replace("$context.error.messageString", json.dumps(message)))


def test_gateway_responses_answer_in_the_api_error_shape(package):
    _, template, _ = package
    responses = rest_api(template)["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]
    must = {"DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN", "INVALID_API_KEY", "THROTTLED"}
    assert must <= set(responses)
    for response_type, response in responses.items():
        body = render(response["responseTemplates"]["application/json"], "Forbidden")
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, response_type
        assert body["error"]["code"] and body["error"]["message"], response_type
        assert response["responseParameters"]["gatewayresponse.header.Content-Type"] == "'application/json'"
    # An unknown route is a 404 of ours, not API Gateway's 403 "Missing Authentication Token".
    unknown = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert unknown["statusCode"] == "404"
    assert render(unknown["responseTemplates"]["application/json"], "x")["error"]["code"] == "not_found"
    assert responses["INVALID_API_KEY"]["statusCode"] == "403"
    assert (
        "x-api-key"
        in render(responses["INVALID_API_KEY"]["responseTemplates"]["application/json"], "")["error"][
            "message"
        ]
    )
    throttled = responses["THROTTLED"]
    assert (
        throttled["statusCode"] == "429"
        and "gatewayresponse.header.Retry-After" in throttled["responseParameters"]
    )
    # The fallbacks keep API Gateway's own status and message.
    for fallback in ("DEFAULT_4XX", "DEFAULT_5XX"):
        assert "statusCode" not in responses[fallback]
        assert (
            render(responses[fallback]["responseTemplates"]["application/json"], "Oops")["error"]["message"]
            == "Oops"
        )


def test_tracing_is_on_for_the_functions_and_the_api(package):
    _, template, _ = package
    for function in resources(template, "AWS::Serverless::Function").values():
        assert function["Properties"]["Tracing"] == "Active"
    assert rest_api(template)["TracingEnabled"] is True


def alarm_metrics(template: dict) -> dict[tuple[str, str], list[dict]]:
    found: dict[tuple[str, str], list[dict]] = {}
    for alarm in resources(template, "AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        dimensions = {d["Name"]: d["Value"] for d in properties["Dimensions"]}
        found.setdefault((properties["Namespace"], properties["MetricName"]), []).append(dimensions)
    return found


def test_alarms_watch_the_api_the_functions_and_the_stage_endpoint(package):
    stage, template, _ = package
    from chalicelib import observability

    found = alarm_metrics(template)
    api = rest_api(template)
    api_dimensions = {"ApiName": api["Name"], "Stage": api["StageName"]}
    assert api["Name"] == api["DefinitionBody"]["info"]["title"] == f"dogbreeds-{stage}"
    assert found[("AWS/ApiGateway", "5XXError")] == [api_dimensions]
    assert found[("AWS/ApiGateway", "Latency")] == [api_dimensions]
    endpoint = {"EndpointName": f"dogbreeds-{stage}", "VariantName": "AllTraffic"}
    for metric in ("Invocation5XXErrors", "InvocationModelErrors", "ModelLatency"):
        assert found[("AWS/SageMaker", metric)] == [endpoint], metric
    functions = set(resources(template, "AWS::Serverless::Function"))
    for metric in ("Errors", "Throttles"):
        watched = {d["FunctionName"]["Ref"] for d in found[("AWS/Lambda", metric)]}
        assert watched == functions, metric
    # The API's own metric, with exactly the dimensions chalicelib/observability.py publishes it with.
    assert found[(observability.NAMESPACE, "Errors")] == [
        {"service": observability.SERVICE, "stage": stage, "code": code}
        for code in ("model_error", "bad_model_answer")
    ]
    latency = [
        a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["MetricName"] in ("Latency", "ModelLatency")
    ]
    assert all(p["ExtendedStatistic"] == "p99" and "Statistic" not in p for p in latency)
    (topic,) = resources(template, "AWS::SNS::Topic")
    for alarm in resources(template, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
        assert alarm["Properties"]["AlarmName"].startswith(f"dogbreeds-{stage}-")


def test_the_templates_endpoint_alarms_are_the_ones_deploy_rolls_back_on(package):
    """One definition (training/jobs/alarms.py) for both: the same metrics, statistics, dimensions and
    comparisons; only the periods and actions differ."""
    from training.jobs.alarms import rollback_alarm_requests

    stage, template, _ = package
    shared = ("Namespace", "MetricName", "Dimensions", "Statistic", "ExtendedStatistic", "ComparisonOperator")

    def key(properties: dict) -> tuple:
        return tuple(json.dumps(properties.get(name), sort_keys=True) for name in shared)

    in_template = {
        key(alarm["Properties"])
        for alarm in resources(template, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["Namespace"] == "AWS/SageMaker"
    }
    in_deploy = {key(call.params) for call in rollback_alarm_requests(f"dogbreeds-{stage}", latency_ms=1000)}
    assert in_template == in_deploy and len(in_deploy) == 3
