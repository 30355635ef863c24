"""The CloudWatch alarms `deploy` creates and names for an endpoint, and `teardown` removes.

- Rollback alarms: a blue/green update rolls back when one fires while traffic moves (the endpoint's 5xx
  answers, the model's errors, the model's p99 latency).
- The async backlog alarm (made by autoscaling.py): queued requests while no instance runs.
"""

from __future__ import annotations

from training.jobs.autoscaling import NAMESPACE, VARIANT, backlog_alarm_name
from training.jobs.calls import Aws, AwsCall

PERIOD_S = 60


def rollback_alarm_names(endpoint_name: str) -> list[str]:
    return [f"{endpoint_name}-5xx-errors", f"{endpoint_name}-model-errors", f"{endpoint_name}-model-latency"]


def all_alarm_names(endpoint_name: str) -> list[str]:
    return [*rollback_alarm_names(endpoint_name), backlog_alarm_name(endpoint_name)]


def _variant_dimensions(endpoint_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": VARIANT}]


def rollback_alarm_requests(endpoint_name: str, latency_ms: float) -> list[AwsCall]:
    """Any 5xx or model error in a minute, or a p99 model latency over `latency_ms` two minutes running."""
    five_xx, model_errors, latency = rollback_alarm_names(endpoint_name)
    common = {
        "Namespace": NAMESPACE,
        "Dimensions": _variant_dimensions(endpoint_name),
        "Period": PERIOD_S,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        # No traffic is no evidence against the new model.
        "TreatMissingData": "notBreaching",
    }
    return [
        AwsCall(
            "cloudwatch",
            "PutMetricAlarm",
            {
                "AlarmName": five_xx,
                "AlarmDescription": f"{endpoint_name} answers 5xx: an update in progress rolls back",
                "MetricName": "Invocation5XXErrors",
                "Statistic": "Sum",
                "EvaluationPeriods": 1,
                "Threshold": 1.0,
                **common,
            },
        ),
        AwsCall(
            "cloudwatch",
            "PutMetricAlarm",
            {
                "AlarmName": model_errors,
                "AlarmDescription": f"{endpoint_name}'s model fails: an update in progress rolls back",
                "MetricName": "InvocationModelErrors",
                "Statistic": "Sum",
                "EvaluationPeriods": 1,
                "Threshold": 1.0,
                **common,
            },
        ),
        AwsCall(
            "cloudwatch",
            "PutMetricAlarm",
            {
                "AlarmName": latency,
                "AlarmDescription": f"{endpoint_name}'s p99 model latency is over {latency_ms:g} ms",
                "MetricName": "ModelLatency",
                "ExtendedStatistic": "p99",
                "EvaluationPeriods": 2,
                # ModelLatency is in microseconds.
                "Threshold": latency_ms * 1000.0,
                **common,
            },
        ),
    ]


def put_rollback_alarms(aws: Aws, endpoint_name: str, latency_ms: float, log) -> list[str]:
    """Create (or overwrite) the rollback alarms; returns their names."""
    for call in rollback_alarm_requests(endpoint_name, latency_ms):
        aws.send(call)
    names = rollback_alarm_names(endpoint_name)
    log(f"alarms for automatic rollback: {', '.join(names)}")
    return names


def delete_alarms(aws: Aws, endpoint_name: str, log) -> None:
    """Delete every alarm `deploy` names for the endpoint; CloudWatch skips names that do not exist."""
    names = all_alarm_names(endpoint_name)
    aws.send(AwsCall("cloudwatch", "DeleteAlarms", {"AlarmNames": names}))
    log(f"deleted alarms {', '.join(names)} (those that existed)")
