"""`python -m scripts.protect_stage` against a real moto_server's API Gateway, CloudWatch and SNS: a REST API
made as `chalice deploy` makes it (stage `api`, no name per stage, no gateway responses, throttling, keys or
alarms) gets exactly what the packaged template adds, from merge_template's own definitions, and a second
run changes nothing."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from scripts import merge_template, protect_stage

REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.fixture
def aws(moto, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    session = boto3.session.Session(region_name=REGION)
    return {name: session.client(name) for name in ("apigateway", "cloudwatch", "sns")}


def chalice_deploy(aws, chalice_dir, stage: str) -> str:
    """What `chalice deploy --stage STAGE` leaves: a REST API named after the app, deployed to stage `api`,
    and .chalice/deployed/STAGE.json naming it and the two functions."""
    apigateway = aws["apigateway"]
    api_id = apigateway.create_rest_api(name="dogbreeds")["id"]
    root = next(r["id"] for r in apigateway.get_resources(restApiId=api_id)["items"] if r["path"] == "/")
    apigateway.put_method(restApiId=api_id, resourceId=root, httpMethod="GET", authorizationType="NONE")
    apigateway.put_integration(restApiId=api_id, resourceId=root, httpMethod="GET", type="MOCK")
    apigateway.create_deployment(restApiId=api_id, stageName="api")
    functions = {"api_handler": f"dogbreeds-{stage}", "classify": f"dogbreeds-{stage}-classify"}
    resources = [
        {
            "name": name,
            "resource_type": "lambda_function",
            "lambda_arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}",
        }
        for name, function in functions.items()
    ]
    resources.append({"name": "rest_api", "resource_type": "rest_api", "rest_api_id": api_id})
    deployed = chalice_dir / "deployed"
    deployed.mkdir(parents=True, exist_ok=True)
    (deployed / f"{stage}.json").write_text(json.dumps({"resources": resources, "schema_version": "2.0"}))
    return api_id


def run(capsys, stage: str, chalice_dir) -> tuple[dict, str]:
    assert protect_stage.main(["--stage", stage, "--chalice-dir", str(chalice_dir)]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def state_of(aws, api_id: str, wanted: merge_template.Protection) -> dict:
    """Everything the command may touch, as AWS describes it."""
    apigateway = aws["apigateway"]
    alarm_names = [alarm["Properties"]["AlarmName"] for alarm in wanted.alarms.values()]
    return {
        "api": apigateway.get_rest_api(restApiId=api_id)["name"],
        "stage": {
            key: value
            for key, value in apigateway.get_stage(restApiId=api_id, stageName="api").items()
            if key != "ResponseMetadata"
        },
        "gateway_responses": apigateway.get_gateway_responses(restApiId=api_id)["items"],
        "deployments": len(apigateway.get_deployments(restApiId=api_id)["items"]),
        "plans": apigateway.get_usage_plans()["items"],
        "keys": apigateway.get_api_keys()["items"],
        "topics": aws["sns"].list_topics()["Topics"],
        "alarms": aws["cloudwatch"].describe_alarms(AlarmNames=alarm_names)["MetricAlarms"],
    }


def test_prod_gets_the_templates_protection_and_a_second_run_changes_nothing(aws, capsys, tmp_path):
    chalice_dir = tmp_path / ".chalice"
    api_id = chalice_deploy(aws, chalice_dir, "prod")
    wanted = merge_template.protection("prod")
    apigateway = aws["apigateway"]

    report, log = run(capsys, "prod", chalice_dir)

    assert report["rest_api_id"] == api_id and report["changed"]
    assert apigateway.get_rest_api(restApiId=api_id)["name"] == "dogbreeds-prod"
    stage = apigateway.get_stage(restApiId=api_id, stageName="api")
    ops = merge_template.STAGE_OPS["prod"]
    throttling = stage["methodSettings"]["*/*"]
    assert (throttling["throttlingRateLimit"], throttling["throttlingBurstLimit"]) == (
        ops.rate_per_s,
        ops.burst,
    )
    assert stage["tracingEnabled"] is True
    for response_type, response in merge_template.gateway_responses().items():
        found = apigateway.get_gateway_response(restApiId=api_id, responseType=response_type)
        assert {key: found.get(key) for key in response} == response, response_type
    assert len(apigateway.get_deployments(restApiId=api_id)["items"]) == 2  # chalice's, then the responses'

    (plan,) = [p for p in apigateway.get_usage_plans()["items"] if p["name"] == "dogbreeds-prod"]
    assert plan["apiStages"] == [{"apiId": api_id, "stage": "api"}]
    assert plan["throttle"] == {"rateLimit": ops.key_rate_per_s, "burstLimit": ops.key_burst}
    assert (plan["quota"]["limit"], plan["quota"]["period"]) == (ops.key_quota_per_day, "DAY")
    key = apigateway.get_api_key(apiKey=report["api_key_id"])
    assert key["name"] == "dogbreeds-prod-default" and key["enabled"] is True
    plan_keys = apigateway.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    assert [k["id"] for k in plan_keys] == [key["id"]]
    assert f"API key id: {key['id']}" in log

    topic = report["alarm_topic_arn"]
    assert topic.endswith(":dogbreeds-prod-alarms")
    alarms = {a["AlarmName"]: a for a in state_of(aws, api_id, wanted)["alarms"]}
    assert set(alarms) == {alarm["Properties"]["AlarmName"] for alarm in wanted.alarms.values()}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    handler = alarms["dogbreeds-prod-apihandler-errors"]
    assert handler["Dimensions"] == [{"Name": "FunctionName", "Value": "dogbreeds-prod"}]
    api_alarm = alarms["dogbreeds-prod-api-5xx-rate"]
    assert {d["Name"]: d["Value"] for d in api_alarm["Dimensions"]} == {
        "ApiName": "dogbreeds-prod",
        "Stage": "api",
    }

    before = state_of(aws, api_id, wanted)
    again, log = run(capsys, "prod", chalice_dir)
    assert again["changed"] == [] and "nothing changed" in log
    assert again["api_key_id"] == report["api_key_id"] and again["alarm_topic_arn"] == topic
    assert state_of(aws, api_id, wanted) == before


def test_dev_gets_throttling_responses_and_alarms_but_no_keys(aws, capsys, tmp_path):
    chalice_dir = tmp_path / ".chalice"
    api_id = chalice_deploy(aws, chalice_dir, "dev")
    plans_before = aws["apigateway"].get_usage_plans()["items"]

    report, _ = run(capsys, "dev", chalice_dir)

    assert report["api_key_id"] is None
    assert aws["apigateway"].get_usage_plans()["items"] == plans_before
    stage = aws["apigateway"].get_stage(restApiId=api_id, stageName="api")
    assert stage["methodSettings"]["*/*"]["throttlingRateLimit"] == merge_template.STAGE_OPS["dev"].rate_per_s
    assert report["alarm_topic_arn"].endswith(":dogbreeds-dev-alarms")
    assert run(capsys, "dev", chalice_dir)[0]["changed"] == []

    # Drift (a hand-edited limit, a deleted alarm) is put back, and nothing else is touched.
    patch = [{"op": "replace", "path": "/*/*/throttling/rateLimit", "value": "1"}]
    aws["apigateway"].update_stage(restApiId=api_id, stageName="api", patchOperations=patch)
    aws["cloudwatch"].delete_alarms(AlarmNames=["dogbreeds-dev-classify-errors"])
    assert run(capsys, "dev", chalice_dir)[0]["changed"] == [
        "stage api: /*/*/throttling/rateLimit",
        "alarms dogbreeds-dev-classify-errors",
    ]


def test_a_stage_chalice_has_not_deployed_is_a_clear_error(aws, tmp_path):
    with pytest.raises(SystemExit) as refused:
        protect_stage.main(["--stage", "prod", "--chalice-dir", str(tmp_path / uuid.uuid4().hex)])
    assert "chalice deploy --stage prod" in str(refused.value)
