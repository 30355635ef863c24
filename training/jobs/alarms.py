"""The CloudWatch alarms `deploy` creates and names for an endpoint, and `teardown` removes.

- Rollback alarms: a blue/green update rolls back when one fires while traffic moves (the endpoint's 5xx
  answers, the model's errors, the model's p99 latency).
- The async backlog alarm (made by autoscaling.py): queued requests while no instance runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.contract import PRODUCTION_VARIANT
from training.jobs.autoscaling import NAMESPACE, backlog_alarm_name
from training.jobs.calls import Aws, AwsCall

PERIOD_S = 60


@dataclass(frozen=True)
class EndpointAlarm:
    """One alarm on the endpoint's own CloudWatch metrics. Deploy's rollback alarms and the packaged
    template's alarms (scripts/merge_template.py) are both made from ENDPOINT_ALARMS; each adds its own
    period and actions."""

    key: str  # the alarm name's suffix
    metric: str
    statistic: str  # "Sum", or a percentile such as "p99"
    what: str  # the description; {endpoint} and {latency_ms} are filled in
    is_latency: bool = False

    def name(self, prefix: str) -> str:
        return f"{prefix}-{self.key}"

    def logical_id(self) -> str:
        return "AlarmEndpoint" + "".join(part.capitalize() for part in self.key.split("-"))

    def metric_properties(self, endpoint_name: str, latency_ms: float) -> dict[str, Any]:
        """Namespace, metric, dimensions, statistic, comparison and threshold: what PutMetricAlarm and an
        AWS::CloudWatch::Alarm share. Counts alarm on any error; latency past `latency_ms`."""
        statistic = (
            {"Statistic": self.statistic}
            if self.statistic == "Sum"
            else {"ExtendedStatistic": self.statistic}
        )
        return {
            "Namespace": NAMESPACE,
            "MetricName": self.metric,
            "Dimensions": _variant_dimensions(endpoint_name),
            **statistic,
            "ComparisonOperator": "GreaterThanThreshold",
            # ModelLatency is in microseconds.
            "Threshold": latency_ms * 1000.0 if self.is_latency else 0.0,
        }

    def description(self, endpoint_name: str, latency_ms: float) -> str:
        return self.what.format(endpoint=endpoint_name, latency_ms=latency_ms)


ENDPOINT_ALARMS = (
    EndpointAlarm("5xx-errors", "Invocation5XXErrors", "Sum", "{endpoint} answered 5xx"),
    EndpointAlarm(
        "model-errors", "InvocationModelErrors", "Sum", "{endpoint}'s model failed invocations (not 2xx)"
    ),
    EndpointAlarm(
        "model-latency",
        "ModelLatency",
        "p99",
        "{endpoint}'s p99 model latency is over {latency_ms:g} ms",
        is_latency=True,
    ),
)


def rollback_alarm_names(endpoint_name: str) -> list[str]:
    return [alarm.name(endpoint_name) for alarm in ENDPOINT_ALARMS]


def all_alarm_names(endpoint_name: str) -> list[str]:
    return [*rollback_alarm_names(endpoint_name), backlog_alarm_name(endpoint_name)]


def _variant_dimensions(endpoint_name: str) -> list[dict[str, str]]:
    return [
        {"Name": "EndpointName", "Value": endpoint_name},
        {"Name": "VariantName", "Value": PRODUCTION_VARIANT},
    ]


def rollback_alarm_requests(endpoint_name: str, latency_ms: float) -> list[AwsCall]:
    """Any 5xx or model error in a minute, or a p99 model latency over `latency_ms` two minutes running: a
    blue/green update in progress rolls back when one fires."""
    return [
        AwsCall(
            "cloudwatch",
            "PutMetricAlarm",
            {
                "AlarmName": alarm.name(endpoint_name),
                "AlarmDescription": alarm.description(endpoint_name, latency_ms)
                + ": an update in progress rolls back",
                **alarm.metric_properties(endpoint_name, latency_ms),
                "Period": PERIOD_S,
                "EvaluationPeriods": 2 if alarm.is_latency else 1,
                # No traffic is no evidence against the new model.
                "TreatMissingData": "notBreaching",
            },
        )
        for alarm in ENDPOINT_ALARMS
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
