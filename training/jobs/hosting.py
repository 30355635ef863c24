"""SageMaker's hosting options beside real-time instances, as `deploy` flags: each a spec checked against the
bounds the API documents, and the piece of the CreateEndpointConfig / UpdateEndpoint request it becomes.

- Serverless Inference: memory and concurrency instead of instances; pay per request; CPU only.
- Asynchronous Inference: requests queue, results land in S3 (SNS says when); scales to zero.
- Data capture: a share of requests and answers written to S3.
- Safe updates: blue/green with canary traffic shifting and automatic rollback on CloudWatch alarms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sagemaker.core import shapes
from sagemaker.core.fw_utils import _is_gpu_instance

from training.jobs.storage import parse_s3_uri

SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
# ServerlessConfig.MaxConcurrency's bounds in the SageMaker API.
MAX_SERVERLESS_CONCURRENCY = 200
# TrafficRoutingConfig allows at most 3600 s between steps; canary steps above half the fleet are refused.
MAX_BAKE_MINUTES = 60
MAX_CANARY_PERCENT = 50
SNS_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}")


class HostingError(ValueError):
    """A hosting option is out of SageMaker's bounds or does not combine with another."""


@dataclass(frozen=True)
class ServerlessSpec:
    memory_mb: int
    max_concurrency: int
    # Requests SageMaker keeps warm containers for (billed while idle). A cold start is the container starting
    # and loading the model, which can outlast the API's read timeout on an endpoint that has scaled to zero.
    provisioned_concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.memory_mb not in SERVERLESS_MEMORY_MB:
            sizes = ", ".join(str(size) for size in SERVERLESS_MEMORY_MB)
            raise HostingError(f"--serverless-memory must be one of {sizes} (MB), got {self.memory_mb}")
        if not 1 <= self.max_concurrency <= MAX_SERVERLESS_CONCURRENCY:
            raise HostingError(
                f"--max-concurrency must be from 1 to {MAX_SERVERLESS_CONCURRENCY}, "
                f"got {self.max_concurrency}"
            )
        provisioned = self.provisioned_concurrency
        if provisioned is not None and not 1 <= provisioned <= self.max_concurrency:
            raise HostingError(
                f"--provisioned-concurrency must be from 1 to --max-concurrency ({self.max_concurrency}), "
                f"got {provisioned}"
            )

    def variant_config(self) -> shapes.ProductionVariantServerlessConfig:
        return shapes.ProductionVariantServerlessConfig(
            memory_size_in_mb=self.memory_mb,
            max_concurrency=self.max_concurrency,
            provisioned_concurrency=self.provisioned_concurrency,
        )


def refuse_instances_for_serverless(instance_type: str | None, image_uri: str) -> None:
    """Serverless endpoints run on CPU without instances; raises HostingError for an instance or GPU image."""
    if instance_type and _is_gpu_instance(instance_type):
        raise HostingError(
            f"Serverless Inference runs on CPU only: --instance-type {instance_type} is a GPU instance; "
            "drop --serverless-memory to deploy on it, or drop --instance-type to deploy serverless"
        )
    if instance_type:
        raise HostingError(
            f"Serverless Inference has no instances: drop --instance-type {instance_type} "
            "(memory and concurrency come from --serverless-memory and --max-concurrency)"
        )
    if "-gpu-" in image_uri:
        raise HostingError(f"Serverless Inference runs on CPU only, and {image_uri} is a GPU image")


@dataclass(frozen=True)
class AsyncSpec:
    output: str  # s3:// prefix where SageMaker writes each result
    success_topic: str | None = None
    error_topic: str | None = None

    def __post_init__(self) -> None:
        parse_s3_uri(self.output)
        for flag, topic in (
            ("--async-success-topic", self.success_topic),
            ("--async-error-topic", self.error_topic),
        ):
            if topic is not None and not SNS_TOPIC_ARN.fullmatch(topic):
                raise HostingError(
                    f"{flag} must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME), got {topic!r}"
                )

    @property
    def failure_output(self) -> str:
        return f"{self.output.rstrip('/')}-failures"

    def config(self) -> shapes.AsyncInferenceConfig:
        notification = None
        if self.success_topic or self.error_topic:
            notification = shapes.AsyncInferenceNotificationConfig(
                success_topic=self.success_topic, error_topic=self.error_topic
            )
        return shapes.AsyncInferenceConfig(
            output_config=shapes.AsyncInferenceOutputConfig(
                s3_output_path=self.output,
                s3_failure_path=self.failure_output,
                notification_config=notification,
            )
        )


DEFAULT_CAPTURE_RETENTION_DAYS = 30
MAX_CAPTURE_RETENTION_DAYS = 3650


@dataclass(frozen=True)
class CaptureSpec:
    percent: int
    destination: str  # s3:// prefix
    # How long S3 keeps each captured object (a lifecycle rule on the prefix): the bucket's setting, not the
    # endpoint config's, so changing it updates no endpoint.
    retention_days: int = DEFAULT_CAPTURE_RETENTION_DAYS

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 100:
            raise HostingError(f"--capture-percent must be from 1 to 100, got {self.percent}")
        if not 1 <= self.retention_days <= MAX_CAPTURE_RETENTION_DAYS:
            raise HostingError(
                f"--capture-retention-days must be from 1 to {MAX_CAPTURE_RETENTION_DAYS}, "
                f"got {self.retention_days}"
            )
        parse_s3_uri(self.destination)

    def config_facts(self) -> dict:
        """What the endpoint config holds of it (its name digests these)."""
        return {"percent": self.percent, "destination": self.destination}

    def config(self) -> shapes.DataCaptureConfig:
        return shapes.DataCaptureConfig(
            enable_capture=True,
            initial_sampling_percentage=self.percent,
            destination_s3_uri=self.destination,
            capture_options=[
                shapes.CaptureOption(capture_mode="Input"),
                shapes.CaptureOption(capture_mode="Output"),
            ],
            # The answers are JSON: captured as text; the photos (image/jpeg) are captured base64-encoded.
            capture_content_type_header=shapes.CaptureContentTypeHeader(
                json_content_types=["application/json"]
            ),
        )


@dataclass(frozen=True)
class RolloutSpec:
    """How an update moves traffic: a canary share first (or all at once), each step baked and watched."""

    canary_percent: int | None = None
    bake_minutes: int = 10
    latency_ms: float = 2000.0  # the latency alarm's threshold (ModelLatency p99)

    def __post_init__(self) -> None:
        if self.canary_percent is not None and not 1 <= self.canary_percent <= MAX_CANARY_PERCENT:
            raise HostingError(
                f"--canary-percent must be from 1 to {MAX_CANARY_PERCENT} (the canary is the smaller part of "
                f"the fleet), got {self.canary_percent}"
            )
        if not 0 <= self.bake_minutes <= MAX_BAKE_MINUTES:
            raise HostingError(
                f"--bake-minutes must be from 0 to {MAX_BAKE_MINUTES}, got {self.bake_minutes}"
            )

    def describe(self) -> str:
        share = "all traffic at once" if self.canary_percent is None else f"{self.canary_percent}% first"
        return f"{share}, {self.bake_minutes} min bake per step"

    @property
    def longest_s(self) -> int:
        """How long the traffic shifting itself may take: the canary's bake, then the final bake."""
        return 2 * self.bake_minutes * 60

    def deployment_config(self, alarm_names: list[str]) -> shapes.DeploymentConfig:
        if self.canary_percent is None:
            routing = shapes.TrafficRoutingConfig(
                type="ALL_AT_ONCE", wait_interval_in_seconds=self.bake_minutes * 60
            )
        else:
            routing = shapes.TrafficRoutingConfig(
                type="CANARY",
                wait_interval_in_seconds=self.bake_minutes * 60,
                canary_size=shapes.CapacitySize(type="CAPACITY_PERCENT", value=self.canary_percent),
            )
        return shapes.DeploymentConfig(
            blue_green_update_policy=shapes.BlueGreenUpdatePolicy(
                traffic_routing_configuration=routing,
                # The old fleet stays up, and the alarms are watched, this long after all traffic has moved.
                termination_wait_in_seconds=self.bake_minutes * 60,
            ),
            auto_rollback_configuration=shapes.AutoRollbackConfig(
                alarms=[shapes.Alarm(alarm_name=name) for name in alarm_names]
            ),
        )
