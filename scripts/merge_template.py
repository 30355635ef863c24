"""What `chalice package --merge-template` adds to a stage's CloudFormation template (`make package`).

- Gateway responses: whatever API Gateway answers itself (unknown route, missing or invalid API key,
  throttled, body too large, Lambda failure) comes in the API's own error shape
  {"error": {"code", "message"}}, with the stage's CORS header (CORS_ALLOW_ORIGIN) so that a page of the
  allowed origin can read it as it reads the routes' own errors. They are part of the OpenAPI body, so they
  ship with the API's deployment.
- Throttling: every stage's API has a stage-wide rate and burst; a stage whose routes need an API key
  (API_KEY_REQUIRED in .chalice/config.json) gets an API key and a usage plan with a per-key rate, burst and
  daily quota.
- Alarms for the API, both Lambda functions, the stage's SageMaker endpoint and the API's own error metrics,
  all notifying one SNS topic.

The stage's facts (endpoint name, API Gateway stage, X-Ray, API keys) come from .chalice/config.json; the
numbers below are the only place the throttling and alarm figures live. `protection` holds all of it in
CloudFormation's shapes: this module merges it into the packaged template, and scripts/protect_stage.py
applies the same to a stage that `chalice deploy` made.

    python -m scripts.merge_template --stage prod --output build/merge-prod.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# /openapi.json describes the same gateway responses, so they live beside the API's own errors.
from chalicelib.gateway_responses import GATEWAY_RESPONSES
from chalicelib.observability import NAMESPACE as METRICS_NAMESPACE
from chalicelib.observability import SERVICE
from chalicelib.settings import CORS_EXPOSE_HEADERS, parse_cors_origin
from training.jobs.alarms import ENDPOINT_ALARMS

PROJECT = Path(__file__).resolve().parents[1]

CONFIG = PROJECT / ".chalice" / "config.json"
# Chalice's logical ids for the REST API and the two functions (app.app and app.classify), each with the name
# `chalice deploy` gives the function's resource in .chalice/deployed/STAGE.json.
REST_API = "RestAPI"
FUNCTIONS = {"APIHandler": "api_handler", "Classify": "classify"}


@dataclass(frozen=True)
class StageOps:
    """One stage's throttling and alarm thresholds."""

    # The API stage as a whole (all clients together).
    rate_per_s: float
    burst: int
    # Each API key, where the stage needs keys.
    key_rate_per_s: float
    key_burst: int
    key_quota_per_day: int
    # Alarms.
    max_5xx_rate: float
    max_p99_latency_ms: int
    max_endpoint_p99_model_latency_ms: int


# Sized from reserved concurrency (dev 2, prod 20) and about 0.1-1 s per request: the stage limit keeps
# API Gateway from queueing requests Lambda would throttle anyway.
STAGE_OPS = {
    "dev": StageOps(
        rate_per_s=5,
        burst=10,
        key_rate_per_s=5,
        key_burst=10,
        key_quota_per_day=1_000,
        max_5xx_rate=0.05,
        max_p99_latency_ms=10_000,
        max_endpoint_p99_model_latency_ms=2_000,
    ),
    "prod": StageOps(
        rate_per_s=50,
        burst=100,
        key_rate_per_s=10,
        key_burst=20,
        key_quota_per_day=10_000,
        max_5xx_rate=0.01,
        max_p99_latency_ms=5_000,
        max_endpoint_p99_model_latency_ms=1_000,
    ),
}

THROTTLED_RETRY_AFTER_S = 1


def stage_facts(stage: str) -> dict[str, Any]:
    config = json.loads(CONFIG.read_text())
    if stage not in config["stages"]:
        raise SystemExit(f"no stage {stage!r} in {CONFIG}")
    settings = config["stages"][stage]
    environment = {**config.get("environment_variables", {}), **settings.get("environment_variables", {})}
    return {
        "app": config["app_name"],
        "endpoint_name": environment["ENDPOINT_NAME"],
        "api_gateway_stage": settings.get("api_gateway_stage", config.get("api_gateway_stage", "api")),
        "xray": bool(settings.get("xray", config.get("xray", False))),
        "api_key_required": environment.get("API_KEY_REQUIRED", "false") == "true",
        "cors_allow_origin": parse_cors_origin(environment.get("CORS_ALLOW_ORIGIN", "")),
    }


def gateway_responses(allow_origin: str | None = None) -> dict[str, Any]:
    """API Gateway's own answers in our error shape; with the CORS headers of `allow_origin` (app.py's, one
    origin or "*") when the stage allows one, as the routes answer."""
    responses = {}
    for response_type, status, code, message in GATEWAY_RESPONSES:
        # messageString is API Gateway's own message, already a quoted JSON string.
        message_json = json.dumps(message) if message else "$context.error.messageString"
        template = json.dumps({"error": {"code": code, "message": "MESSAGE"}}).replace(
            '"MESSAGE"', message_json
        )
        headers = {"gatewayresponse.header.Content-Type": "'application/json'"}
        if response_type == "THROTTLED":
            headers["gatewayresponse.header.Retry-After"] = f"'{THROTTLED_RETRY_AFTER_S}'"
        if allow_origin:
            headers["gatewayresponse.header.Access-Control-Allow-Origin"] = f"'{allow_origin}'"
            headers["gatewayresponse.header.Access-Control-Expose-Headers"] = (
                f"'{','.join(CORS_EXPOSE_HEADERS)}'"
            )
        response = {"responseParameters": headers, "responseTemplates": {"application/json": template}}
        if status is not None:
            response["statusCode"] = str(status)
        responses[response_type] = response
    return responses


def alarm(name: str, description: str, metric: dict[str, Any], threshold: float, topic: dict) -> dict:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": name,
            "AlarmDescription": description,
            **metric,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": threshold,
            "Period": 300,
            "EvaluationPeriods": 3,
            "DatapointsToAlarm": 2,
            # No traffic is not an outage; a quiet stage stays OK.
            "TreatMissingData": "notBreaching",
            "AlarmActions": [topic],
            "OKActions": [topic],
        },
    }


def dimensions(**values: Any) -> list[dict[str, Any]]:
    return [{"Name": name, "Value": value} for name, value in values.items()]


def alarms(stage: str, facts: dict[str, Any], ops: StageOps) -> dict[str, Any]:
    """Every alarm of the stage, each notifying the stack's AlarmTopic."""
    topic = {"Ref": "AlarmTopic"}
    prefix = f"{facts['app']}-{stage}"
    return {
        **api_gateway_alarms(prefix, facts, ops, topic),
        **endpoint_alarms(prefix, facts, ops, topic),
        **api_error_alarms(prefix, stage, topic),
        **function_alarms(prefix, topic),
    }


def api_gateway_alarms(prefix: str, facts: dict[str, Any], ops: StageOps, topic: dict) -> dict[str, Any]:
    api = dimensions(ApiName=prefix, Stage=facts["api_gateway_stage"])
    return {
        "AlarmApi5xxRate": alarm(
            f"{prefix}-api-5xx-rate",
            "Share of API requests answered 5xx",
            {
                "Namespace": "AWS/ApiGateway",
                "MetricName": "5XXError",
                "Dimensions": api,
                "Statistic": "Average",
            },
            ops.max_5xx_rate,
            topic,
        ),
        "AlarmApiLatencyP99": alarm(
            f"{prefix}-api-latency-p99",
            "p99 of API Gateway's whole-request latency (ms)",
            {
                "Namespace": "AWS/ApiGateway",
                "MetricName": "Latency",
                "Dimensions": api,
                "ExtendedStatistic": "p99",
            },
            ops.max_p99_latency_ms,
            topic,
        ),
    }


def endpoint_alarms(prefix: str, facts: dict[str, Any], ops: StageOps, topic: dict) -> dict[str, Any]:
    """The endpoint's alarms as `deploy` defines them for its rollbacks (training/jobs/alarms.py), over this
    template's longer periods."""
    resources = {}
    latency_ms = ops.max_endpoint_p99_model_latency_ms
    for endpoint_alarm in ENDPOINT_ALARMS:
        properties = endpoint_alarm.metric_properties(facts["endpoint_name"], latency_ms)
        resources[endpoint_alarm.logical_id()] = alarm(
            endpoint_alarm.name(f"{prefix}-endpoint"),
            f"SageMaker endpoint {endpoint_alarm.description(facts['endpoint_name'], latency_ms)}",
            {key: properties[key] for key in properties if key not in ("Threshold", "ComparisonOperator")},
            properties["Threshold"],
            topic,
        )
    return resources


def api_error_alarms(prefix: str, stage: str, topic: dict) -> dict[str, Any]:
    """The API's own view (chalicelib/observability.py's Errors): the model failed, or the endpoint
    answered something that is not an answer (a broken or mismatched model container; SageMaker counts it a
    success)."""
    resources = {}
    for code, what in (
        ("model_error", "The API answered 502 model_error: the endpoint's model failed"),
        ("bad_model_answer", "The API answered 502 bad_model_answer: the endpoint's answer broke the schema"),
    ):
        name = "".join(part.capitalize() for part in code.split("_"))
        resources[f"AlarmApi{name}s"] = alarm(
            f"{prefix}-api-{code.replace('_', '-')}s",
            what,
            {
                "Namespace": METRICS_NAMESPACE,
                "MetricName": "Errors",
                "Dimensions": dimensions(service=SERVICE, stage=stage, code=code),
                "Statistic": "Sum",
            },
            0,
            topic,
        )
    return resources


def function_alarms(prefix: str, topic: dict) -> dict[str, Any]:
    resources = {}
    for function in FUNCTIONS:
        for metric, what in (("Errors", "failed invocations"), ("Throttles", "throttled invocations")):
            resources[f"Alarm{function}{metric}"] = alarm(
                f"{prefix}-{function.lower()}-{metric.lower()}",
                f"Lambda function {function}: {what}",
                {
                    "Namespace": "AWS/Lambda",
                    "MetricName": metric,
                    "Dimensions": dimensions(FunctionName={"Ref": function}),
                    "Statistic": "Sum",
                },
                0,
                topic,
            )
    return resources


def api_keys(stage: str, facts: dict[str, Any], ops: StageOps) -> dict[str, Any]:
    name = f"{facts['app']}-{stage}"
    return {
        "ApiKey": {
            "Type": "AWS::ApiGateway::ApiKey",
            "Properties": {
                "Name": f"{name}-default",
                "Description": f"{name}'s first client key",
                "Enabled": True,
            },
        },
        "UsagePlan": {
            "Type": "AWS::ApiGateway::UsagePlan",
            "Properties": {
                "UsagePlanName": name,
                "Description": f"Per-key limits of {name}",
                # RestAPI.Stage is SAM's reference to the stage it creates (and waits for it).
                "ApiStages": [{"ApiId": {"Ref": REST_API}, "Stage": {"Ref": f"{REST_API}.Stage"}}],
                "Throttle": {"RateLimit": ops.key_rate_per_s, "BurstLimit": ops.key_burst},
                "Quota": {"Limit": ops.key_quota_per_day, "Period": "DAY"},
            },
        },
        "UsagePlanKey": {
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": {
                "KeyId": {"Ref": "ApiKey"},
                "KeyType": "API_KEY",
                "UsagePlanId": {"Ref": "UsagePlan"},
            },
        },
    }


@dataclass(frozen=True)
class Protection:
    """What a stage gets beyond chalice's own deployment, in CloudFormation's shapes."""

    api_name: str  # one per stage, so that API Gateway's metrics (dimension ApiName) tell the stages apart
    api_stage: str
    method_settings: list[dict[str, Any]]  # the stage-wide throttling
    tracing: bool
    gateway_responses: dict[str, Any]
    topic_name: str
    # Logical id -> AWS::CloudWatch::Alarm; Refs name AlarmTopic and the FUNCTIONS.
    alarms: dict[str, Any]
    # ApiKey, UsagePlan and UsagePlanKey, for a stage whose routes need a key; else None.
    api_keys: dict[str, Any] | None


def protection(stage: str) -> Protection:
    if stage not in STAGE_OPS:
        raise SystemExit(f"no throttling and alarm figures for stage {stage!r}: add it to STAGE_OPS")
    facts, ops = stage_facts(stage), STAGE_OPS[stage]
    api_name = f"{facts['app']}-{stage}"
    throttling = {
        "ResourcePath": "/*",
        "HttpMethod": "*",
        "ThrottlingRateLimit": ops.rate_per_s,
        "ThrottlingBurstLimit": ops.burst,
    }
    return Protection(
        api_name=api_name,
        api_stage=facts["api_gateway_stage"],
        method_settings=[throttling],
        tracing=facts["xray"],
        gateway_responses=gateway_responses(facts["cors_allow_origin"]),
        topic_name=f"{api_name}-alarms",
        alarms=alarms(stage, facts, ops),
        api_keys=api_keys(stage, facts, ops) if facts["api_key_required"] else None,
    )


def merge_template(stage: str) -> dict[str, Any]:
    wanted = protection(stage)
    api_properties: dict[str, Any] = {
        "Name": wanted.api_name,
        "DefinitionBody": {
            "info": {"title": wanted.api_name},
            "x-amazon-apigateway-gateway-responses": wanted.gateway_responses,
        },
        "MethodSettings": wanted.method_settings,
        "TracingEnabled": wanted.tracing,
    }
    resources: dict[str, Any] = {
        REST_API: {"Properties": api_properties},
        "AlarmTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": wanted.topic_name}},
        **wanted.alarms,
    }
    outputs: dict[str, Any] = {"AlarmTopicArn": {"Value": {"Ref": "AlarmTopic"}}}
    if wanted.api_keys is not None:
        resources.update(wanted.api_keys)
        outputs["ApiKeyId"] = {"Value": {"Ref": "ApiKey"}}
        outputs["UsagePlanId"] = {"Value": {"Ref": "UsagePlan"}}
    return {"Resources": resources, "Outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(merge_template(args.stage), indent=2) + "\n")


if __name__ == "__main__":
    main()
