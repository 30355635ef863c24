"""Application Auto Scaling of an endpoint's variant: a scalable target and a target-tracking policy.

A real-time endpoint tracks invocations per instance, from at least one instance. An asynchronous endpoint
tracks its queue (backlog per instance) and may go down to zero instances; with none running there is no
"per instance", so a step policy, fired by an alarm on HasBacklogWithoutCapacity, starts the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.contract import PRODUCTION_VARIANT
from training.jobs.calls import Aws, AwsCall

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
NAMESPACE = "AWS/SageMaker"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"


def resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{PRODUCTION_VARIANT}"


def policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-invocations-per-instance"


def backlog_policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-backlog-per-instance"


def scale_from_zero_policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-scale-out-from-zero"


def backlog_alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-backlog-without-capacity"


@dataclass(frozen=True)
class ScalingSpec:
    endpoint_name: str
    min_instances: int
    max_instances: int
    target_invocations: float
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60
    # Set for an asynchronous endpoint: queued requests per instance to aim for, instead of invocations.
    target_backlog: float | None = None

    @property
    def resource_id(self) -> str:
        return resource_id(self.endpoint_name)

    @property
    def policy_name(self) -> str:
        if self.target_backlog is not None:
            return backlog_policy_name(self.endpoint_name)
        return policy_name(self.endpoint_name)


def scalable_target_request(spec: ScalingSpec) -> AwsCall:
    return AwsCall(
        "application-autoscaling",
        "RegisterScalableTarget",
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": spec.resource_id,
            "ScalableDimension": SCALABLE_DIMENSION,
            "MinCapacity": spec.min_instances,
            "MaxCapacity": spec.max_instances,
        },
    )


def scaling_policy_request(spec: ScalingSpec) -> AwsCall:
    if spec.target_backlog is None:
        tracked = {
            "TargetValue": float(spec.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
        }
    else:
        tracked = {
            "TargetValue": float(spec.target_backlog),
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC,
                "Namespace": NAMESPACE,
                "Dimensions": [{"Name": "EndpointName", "Value": spec.endpoint_name}],
                "Statistic": "Average",
            },
        }
    return AwsCall(
        "application-autoscaling",
        "PutScalingPolicy",
        {
            "PolicyName": spec.policy_name,
            "ServiceNamespace": "sagemaker",
            "ResourceId": spec.resource_id,
            "ScalableDimension": SCALABLE_DIMENSION,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                **tracked,
                "ScaleInCooldown": spec.scale_in_cooldown_s,
                "ScaleOutCooldown": spec.scale_out_cooldown_s,
            },
        },
    )


def scale_from_zero_request(spec: ScalingSpec) -> AwsCall:
    """One instance more whenever the backlog alarm fires (it fires only while none runs)."""
    return AwsCall(
        "application-autoscaling",
        "PutScalingPolicy",
        {
            "PolicyName": scale_from_zero_policy_name(spec.endpoint_name),
            "ServiceNamespace": "sagemaker",
            "ResourceId": spec.resource_id,
            "ScalableDimension": SCALABLE_DIMENSION,
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Average",
                "Cooldown": spec.scale_out_cooldown_s,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            },
        },
    )


def backlog_alarm_request(endpoint_name: str, scale_out_policy_arn: str) -> AwsCall:
    return AwsCall(
        "cloudwatch",
        "PutMetricAlarm",
        {
            "AlarmName": backlog_alarm_name(endpoint_name),
            "AlarmDescription": f"requests wait for {endpoint_name} while it has no instance: start one",
            "Namespace": NAMESPACE,
            "MetricName": "HasBacklogWithoutCapacity",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint_name}],
            "Statistic": "Average",
            "Period": 60,
            "EvaluationPeriods": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
            "AlarmActions": [scale_out_policy_arn],
        },
    )


def apply_scaling(aws: Aws, spec: ScalingSpec, log) -> None:
    """Register the target and put the policy; both create or overwrite, so repeating leaves one of each."""
    aws.send(scalable_target_request(spec))
    aws.send(scaling_policy_request(spec))
    if spec.target_backlog is None:
        log(
            f"auto scaling {spec.resource_id}: {spec.min_instances}..{spec.max_instances} instances, "
            f"target {spec.target_invocations:g} invocations per instance"
        )
        return
    step = aws.send(scale_from_zero_request(spec))
    aws.send(
        backlog_alarm_request(spec.endpoint_name, step.get("PolicyARN", "<PolicyARN of the step policy>"))
    )
    log(
        f"auto scaling {spec.resource_id}: {spec.min_instances}..{spec.max_instances} instances, "
        f"target {spec.target_backlog:g} queued requests per instance; "
        f"alarm {backlog_alarm_name(spec.endpoint_name)} starts the first instance"
    )


def remove_scaling(aws: Aws, endpoint_name: str, log) -> SavedScaling:
    """Delete the endpoint's scaling policies and deregister its scalable target, if there are any.

    Returns what was there, for `restore_scaling`.
    """
    target = resource_id(endpoint_name)
    selector = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": target,
        "ScalableDimension": SCALABLE_DIMENSION,
    }
    describe_policies = AwsCall(
        "application-autoscaling",
        "DescribeScalingPolicies",
        {"ServiceNamespace": "sagemaker", "ResourceId": target},
    )
    policies = (aws.describe(describe_policies) or {}).get("ScalingPolicies", [])
    names = [policy["PolicyName"] for policy in policies]
    if aws.dry_run:
        names = [policy_name(endpoint_name)]
    for name in names:
        aws.send(AwsCall("application-autoscaling", "DeleteScalingPolicy", {"PolicyName": name, **selector}))
        log(f"deleted scaling policy {name}")
    targets = (
        aws.describe(
            AwsCall(
                "application-autoscaling",
                "DescribeScalableTargets",
                {"ServiceNamespace": "sagemaker", "ResourceIds": [target]},
            )
        )
        or {}
    ).get("ScalableTargets", [])
    if aws.dry_run or targets:
        aws.send(AwsCall("application-autoscaling", "DeregisterScalableTarget", selector))
        log(f"deregistered scalable target {target}")
    return SavedScaling(endpoint_name, targets, policies)


@dataclass(frozen=True)
class SavedScaling:
    """An endpoint's scalable target and policies as Application Auto Scaling described them."""

    endpoint_name: str
    targets: list[dict]
    policies: list[dict]


POLICY_CONFIGURATIONS = ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration")


def restore_scaling(aws: Aws, saved: SavedScaling, log) -> None:
    """Register the target and put the policies `remove_scaling` took off, as they were."""
    selector = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(saved.endpoint_name),
        "ScalableDimension": SCALABLE_DIMENSION,
    }
    for target in saved.targets:
        limits = {"MinCapacity": target["MinCapacity"], "MaxCapacity": target["MaxCapacity"]}
        aws.send(AwsCall("application-autoscaling", "RegisterScalableTarget", {**selector, **limits}))
    for policy in saved.policies:
        configuration = {key: policy[key] for key in POLICY_CONFIGURATIONS if key in policy}
        put = AwsCall(
            "application-autoscaling",
            "PutScalingPolicy",
            {
                "PolicyName": policy["PolicyName"],
                "PolicyType": policy["PolicyType"],
                **selector,
                **configuration,
            },
        )
        answer = aws.send(put)
        if policy["PolicyType"] == "StepScaling":
            # A policy put again gets a new ARN; the alarm that fires it must name the new one.
            aws.send(backlog_alarm_request(saved.endpoint_name, answer["PolicyARN"]))
    if saved.targets:
        log(f"restored the auto scaling of {resource_id(saved.endpoint_name)}")
