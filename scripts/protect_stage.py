"""After `chalice deploy --stage S`: what `make package`'s template adds, applied to the stage chalice made.

`chalice deploy` creates the functions and the REST API, but none of what scripts/merge_template.py merges
into the packaged template. This applies exactly that, read from the same definitions
(merge_template.protection): the API's per-stage name, the stage-wide throttling and X-Ray tracing, the
gateway responses in the API's error shape (then a deployment, so that they take effect), on a stage that
needs keys its usage plan and first API key, and the alarms with their SNS topic. Each piece is read first
and only what differs is written, so a second run changes nothing. `chalice deploy` overwrites the API's
definition (name and gateway responses included) on every deploy: run this after each (`make deploy`).

    python -m scripts.protect_stage --stage prod

Prints a JSON report on stdout: what changed, the alarm topic, and the stage's API key id (prod).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3

from scripts.merge_template import FUNCTIONS, PROJECT, Protection, protection

CHALICE_DIR = PROJECT / ".chalice"


def deployed_resources(chalice_dir: Path, stage: str) -> tuple[str, dict[str, str]]:
    """The REST API's id and each function's name (by its logical id) that `chalice deploy` recorded."""
    path = chalice_dir / "deployed" / f"{stage}.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run `chalice deploy --stage {stage}` first")
    resources = {item["name"]: item for item in json.loads(path.read_text())["resources"]}
    if "rest_api" not in resources:
        raise SystemExit(f"{path} has no REST API: is stage {stage!r} deployed?")
    functions = {
        logical: resources[name]["lambda_arn"].split(":")[-1]
        for logical, name in FUNCTIONS.items()
        if name in resources
    }
    return resources["rest_api"]["rest_api_id"], functions


def apply_api(apigateway, api_id: str, wanted: Protection, changed: list[str]) -> None:
    """The API's name, the gateway responses (deployed), then the stage's throttling and tracing."""
    if apigateway.get_rest_api(restApiId=api_id)["name"] != wanted.api_name:
        patch = [{"op": "replace", "path": "/name", "value": wanted.api_name}]
        apigateway.update_rest_api(restApiId=api_id, patchOperations=patch)
        changed.append(f"API name {wanted.api_name}")
    # All of them in one page: API Gateway has a few dozen types, and pages 25 by default.
    items = apigateway.get_gateway_responses(restApiId=api_id, limit=500)["items"]
    present = {item["responseType"]: item for item in items}
    put = []
    for response_type, response in wanted.gateway_responses.items():
        if any(present.get(response_type, {}).get(key) != value for key, value in response.items()):
            apigateway.put_gateway_response(restApiId=api_id, responseType=response_type, **response)
            put.append(response_type)
    if put:
        # Gateway responses take effect with the API's next deployment.
        apigateway.create_deployment(
            restApiId=api_id, stageName=wanted.api_stage, description="gateway responses (protect_stage)"
        )
        changed.append(f"gateway responses {', '.join(put)}, deployed")
    stage = apigateway.get_stage(restApiId=api_id, stageName=wanted.api_stage)
    patch = _stage_patch(stage, wanted)
    if patch:
        apigateway.update_stage(restApiId=api_id, stageName=wanted.api_stage, patchOperations=patch)
        changed.append(f"stage {wanted.api_stage}: " + ", ".join(op["path"] for op in patch))


def _stage_patch(stage: dict[str, Any], wanted: Protection) -> list[dict[str, str]]:
    patch = []
    if bool(stage.get("tracingEnabled")) != wanted.tracing:
        patch.append({"op": "replace", "path": "/tracingEnabled", "value": str(wanted.tracing).lower()})
    for setting in wanted.method_settings:
        scope = f"{setting['ResourcePath'].strip('/')}/{setting['HttpMethod']}"
        present = stage.get("methodSettings", {}).get(scope, {})
        for name, path, value in (
            ("throttlingRateLimit", "throttling/rateLimit", float(setting["ThrottlingRateLimit"])),
            ("throttlingBurstLimit", "throttling/burstLimit", int(setting["ThrottlingBurstLimit"])),
        ):
            if present.get(name) != value:
                patch.append({"op": "replace", "path": f"/{scope}/{path}", "value": str(value)})
    return patch


def apply_keys(apigateway, api_id: str, wanted: Protection, changed: list[str]) -> str:
    """The usage plan on this API's stage and its first key, attached; returns the key's id."""
    key = wanted.api_keys["ApiKey"]["Properties"]
    plan = wanted.api_keys["UsagePlan"]["Properties"]
    throttle = {"rateLimit": plan["Throttle"]["RateLimit"], "burstLimit": plan["Throttle"]["BurstLimit"]}
    quota = {"limit": plan["Quota"]["Limit"], "period": plan["Quota"]["Period"]}
    stage = {"apiId": api_id, "stage": wanted.api_stage}
    plans = [p for p in _all(apigateway, "get_usage_plans") if p["name"] == plan["UsagePlanName"]]
    if not plans:
        plan_id = apigateway.create_usage_plan(
            name=plan["UsagePlanName"],
            description=plan["Description"],
            apiStages=[stage],
            throttle=throttle,
            quota=quota,
        )["id"]
        changed.append(f"usage plan {plan['UsagePlanName']}")
    else:
        plan_id = plans[0]["id"]
        patch = _plan_patch(plans[0], stage, throttle, quota)
        if patch:
            apigateway.update_usage_plan(usagePlanId=plan_id, patchOperations=patch)
            changed.append(f"usage plan {plan['UsagePlanName']}: " + ", ".join(op["path"] for op in patch))
    keys = [k for k in _all(apigateway, "get_api_keys", nameQuery=key["Name"]) if k["name"] == key["Name"]]
    if keys:
        key_id = keys[0]["id"]
    else:
        key_id = apigateway.create_api_key(
            name=key["Name"], description=key["Description"], enabled=key["Enabled"]
        )["id"]
        changed.append(f"API key {key['Name']}")
    if key_id not in {k["id"] for k in _all(apigateway, "get_usage_plan_keys", usagePlanId=plan_id)}:
        apigateway.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
        changed.append(f"API key {key['Name']} in usage plan {plan['UsagePlanName']}")
    return key_id


def _plan_patch(present: dict, stage: dict, throttle: dict, quota: dict) -> list[dict[str, str]]:
    patch = [
        {"op": "replace", "path": f"/{part}/{name}", "value": str(value)}
        for part, wanted in (("throttle", throttle), ("quota", quota))
        for name, value in wanted.items()
        if present.get(part, {}).get(name) != value
    ]
    if not any(
        s.get("apiId") == stage["apiId"] and s.get("stage") == stage["stage"]
        for s in present.get("apiStages", [])
    ):
        patch.append({"op": "add", "path": "/apiStages", "value": f"{stage['apiId']}:{stage['stage']}"})
    return patch


def _all(apigateway, operation: str, **params) -> list[dict]:
    return [item for page in apigateway.get_paginator(operation).paginate(**params) for item in page["items"]]


def apply_alarms(sns, cloudwatch, wanted: Protection, functions: dict[str, str], changed: list[str]) -> str:
    """The alarm topic and every alarm, each notifying it; returns the topic's ARN."""
    topics = [
        topic["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for topic in page["Topics"]
    ]
    topic_arn = next((arn for arn in topics if arn.split(":")[-1] == wanted.topic_name), None)
    if topic_arn is None:
        topic_arn = sns.create_topic(Name=wanted.topic_name)["TopicArn"]
        changed.append(f"SNS topic {wanted.topic_name}")
    refs = {"AlarmTopic": topic_arn, **functions}
    alarms = [_resolved(resource["Properties"], refs) for resource in wanted.alarms.values()]
    names = [alarm["AlarmName"] for alarm in alarms]
    present = {
        alarm["AlarmName"]: alarm
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNames=names)
        for alarm in page["MetricAlarms"]
    }
    put = [alarm for alarm in alarms if not _same_alarm(present.get(alarm["AlarmName"]), alarm)]
    for alarm in put:
        cloudwatch.put_metric_alarm(**alarm)
    if put:
        changed.append(f"alarms {', '.join(alarm['AlarmName'] for alarm in put)}")
    return topic_arn


def _resolved(value: Any, refs: dict[str, str]) -> Any:
    """A CloudFormation value with each {"Ref": NAME} replaced by what NAME is in this deployment."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            if value["Ref"] not in refs:
                raise SystemExit(f"nothing deployed for {value['Ref']}: is the stage fully deployed?")
            return refs[value["Ref"]]
        return {key: _resolved(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolved(item, refs) for item in value]
    return value


def _same_alarm(present: dict | None, wanted: dict) -> bool:
    if present is None:
        return False
    for key, value in wanted.items():
        found = present.get(key)
        if key == "Dimensions":
            found, value = (sorted((d["Name"], d["Value"]) for d in dims) for dims in (found or [], value))
        elif key == "Threshold":
            found, value = float(found or 0), float(value)
        if found != value:
            return False
    return True


def protect(session, stage: str, chalice_dir: Path, log) -> dict[str, Any]:
    """Apply the stage's protection to what `chalice deploy` made; returns what changed and the ids."""
    wanted = protection(stage)
    api_id, functions = deployed_resources(chalice_dir, stage)
    apigateway = session.client("apigateway")
    changed: list[str] = []
    apply_api(apigateway, api_id, wanted, changed)
    key_id = apply_keys(apigateway, api_id, wanted, changed) if wanted.api_keys is not None else None
    topic_arn = apply_alarms(session.client("sns"), session.client("cloudwatch"), wanted, functions, changed)
    for change in changed:
        log(f"stage {stage}: {change}")
    if not changed:
        log(f"stage {stage}: already protected, nothing changed")
    return {
        "stage": stage,
        "rest_api_id": api_id,
        "api_name": wanted.api_name,
        "changed": changed,
        "alarm_topic_arn": topic_arn,
        "api_key_id": key_id,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--region", help="default: the AWS profile's or AWS_DEFAULT_REGION")
    parser.add_argument(
        "--chalice-dir", type=Path, default=CHALICE_DIR, help="where deployed/STAGE.json is (this project's)"
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    report = protect(boto3.session.Session(region_name=args.region), args.stage, args.chalice_dir, log)
    if report["api_key_id"]:
        key_id = report["api_key_id"]
        log(
            f"stage {args.stage}'s API key id: {key_id} "
            f"(its value: aws apigateway get-api-key --api-key {key_id} --include-value)"
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
