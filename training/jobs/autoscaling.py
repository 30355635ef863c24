"""Application Auto Scaling of an endpoint's variant: a scalable target and a target-tracking policy."""

from __future__ import annotations

from dataclasses import dataclass

from training.jobs.calls import Aws, AwsCall

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"


def resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-invocations-per-instance"


@dataclass(frozen=True)
class ScalingSpec:
    endpoint_name: str
    min_instances: int
    max_instances: int
    target_invocations: float
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60

    @property
    def resource_id(self) -> str:
        return resource_id(self.endpoint_name)

    @property
    def policy_name(self) -> str:
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
                "TargetValue": float(spec.target_invocations),
                "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
                "ScaleInCooldown": spec.scale_in_cooldown_s,
                "ScaleOutCooldown": spec.scale_out_cooldown_s,
            },
        },
    )


def apply_scaling(aws: Aws, spec: ScalingSpec, log) -> None:
    """Register the target and put the policy; both create or overwrite, so repeating leaves one of each."""
    aws.send(scalable_target_request(spec))
    aws.send(scaling_policy_request(spec))
    log(
        f"auto scaling {spec.resource_id}: {spec.min_instances}..{spec.max_instances} instances, "
        f"target {spec.target_invocations:g} invocations per instance"
    )


def remove_scaling(aws: Aws, endpoint_name: str, log) -> None:
    """Delete the endpoint's scaling policies and deregister its scalable target, if there are any."""
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
    policies = aws.describe(describe_policies)
    names = [policy["PolicyName"] for policy in (policies or {}).get("ScalingPolicies", [])]
    if aws.dry_run:
        names = [policy_name(endpoint_name)]
    for name in names:
        aws.send(AwsCall("application-autoscaling", "DeleteScalingPolicy", {"PolicyName": name, **selector}))
        log(f"deleted scaling policy {name}")
    targets = aws.describe(
        AwsCall(
            "application-autoscaling",
            "DescribeScalableTargets",
            {"ServiceNamespace": "sagemaker", "ResourceIds": [target]},
        )
    )
    if aws.dry_run or (targets or {}).get("ScalableTargets"):
        aws.send(AwsCall("application-autoscaling", "DeregisterScalableTarget", selector))
        log(f"deregistered scalable target {target}")
