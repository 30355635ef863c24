"""An endpoint on the PyTorch inference image, created or updated: real-time instances with Application Auto
Scaling, or one of the hosting options of hosting.py (serverless, asynchronous, data capture).

Names carry a digest of what they hold (`<endpoint>-<digest>` for the model and the endpoint config), so
deploying the same thing twice finds everything in place and changes nothing, and deploying something new
creates a new model and config and moves the endpoint onto them with UpdateEndpoint: a blue/green update
that shifts traffic step by step and rolls back by itself when one of the alarms of alarms.py fires, so a
failed update leaves the old model serving. The endpoint is never deleted to be replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from sagemaker.core import image_uris, shapes
from sagemaker.core.utils.utils import serialize

from serving.contract import MODEL_PACKAGE_ENV, MODEL_VERSION_ENV, PRODUCTION_VARIANT
from training.jobs.alarms import delete_alarms, put_rollback_alarms
from training.jobs.autoscaling import ScalingSpec, apply_scaling, remove_scaling, restore_scaling
from training.jobs.calls import Aws, AwsCall, as_api_params
from training.jobs.hosting import (
    AsyncSpec,
    CaptureSpec,
    HostingError,
    RolloutSpec,
    ServerlessSpec,
    refuse_instances_for_serverless,
)
from training.jobs.source_bundle import INFERENCE_ENTRY, digest, repack_model
from training.jobs.storage import expire_prefix, parse_s3_uri
from training.jobs.training_job import FRAMEWORK_VERSION, PY_VERSION

MAX_NAME = 63
TAG = 10
NAME_BASE = MAX_NAME - TAG - 1


def inference_image_uri(region: str, instance_type: str | None, serverless=None) -> str:
    """The PyTorch inference image the handlers run in (the version training uses), for an endpoint or a
    transform job on `instance_type`, or serverless (`serverless`: its ServerlessConfig)."""
    return image_uris.retrieve(
        "pytorch",
        region=region,
        version=FRAMEWORK_VERSION,
        py_version=PY_VERSION,
        instance_type=instance_type,
        image_scope="inference",
        serverless_inference_config=serverless,
    )


@dataclass(frozen=True)
class EndpointSpec:
    region: str
    role: str
    bucket: str
    prefix: str
    model_data: str
    instance_type: str | None  # None for a serverless endpoint
    scaling: ScalingSpec  # names the endpoint; its minimum is also the initial instance count
    serverless: ServerlessSpec | None = None
    async_inference: AsyncSpec | None = None
    capture: CaptureSpec | None = None
    rollout: RolloutSpec = RolloutSpec()
    # The registry's model package it serves (`promote`), told to the container so its answers name it.
    model_package: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.serverless is not None:
            refuse_instances_for_serverless(self.instance_type, self.image_uri)
            if self.async_inference is not None:
                raise HostingError("an endpoint is serverless or asynchronous, not both")
            if self.capture is not None:
                raise HostingError("Serverless Inference does not capture data: drop --capture-percent")
        elif not self.instance_type:
            raise HostingError("an endpoint on instances needs an instance type")

    @property
    def endpoint_name(self) -> str:
        return self.scaling.endpoint_name

    @property
    def kind(self) -> str:
        """What the API's stage needs to know to call it: real-time, serverless or async."""
        if self.serverless is not None:
            return "serverless"
        return "async" if self.async_inference is not None else "real-time"

    @property
    def initial_instances(self) -> int:
        # An asynchronous endpoint may scale down to zero, but starts with one.
        return max(1, self.scaling.min_instances)

    @property
    def image_uri(self) -> str:
        return inference_image_uri(self.region, self.instance_type, self.serverless)


def versioned_name(base: str, *facts: object) -> str:
    """`base-<digest of facts>`, within SageMaker's 63-character limit."""
    tag = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:TAG]
    return f"{base[:NAME_BASE]}-{tag}"


def container_environment(spec) -> dict[str, str]:
    """How the PyTorch inference toolkit finds the handlers (code/inference.py in the repacked model), and
    which model package it serves when `spec` names one (classifier.identity)."""
    environment = {
        "SAGEMAKER_PROGRAM": INFERENCE_ENTRY,
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": spec.region,
    }
    if getattr(spec, "model_package", None):
        environment[MODEL_PACKAGE_ENV] = spec.model_package
        environment[MODEL_VERSION_ENV] = str(spec.model_version)
    return environment


def model_request(spec, model_name: str, model_data_url: str) -> AwsCall:
    params = {
        "ModelName": model_name,
        "ExecutionRoleArn": spec.role,
        "PrimaryContainer": shapes.ContainerDefinition(
            image=spec.image_uri, model_data_url=model_data_url, environment=container_environment(spec)
        ),
    }
    return AwsCall("sagemaker", "CreateModel", serialize(params))


def production_variant(spec: EndpointSpec, model_name: str) -> shapes.ProductionVariant:
    if spec.serverless is not None:
        return shapes.ProductionVariant(
            variant_name=PRODUCTION_VARIANT,
            model_name=model_name,
            serverless_config=spec.serverless.variant_config(),
        )
    return shapes.ProductionVariant(
        variant_name=PRODUCTION_VARIANT,
        model_name=model_name,
        instance_type=spec.instance_type,
        initial_instance_count=spec.initial_instances,
        initial_variant_weight=1.0,
    )


def endpoint_config_request(spec: EndpointSpec, config_name: str, model_name: str) -> AwsCall:
    params = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [production_variant(spec, model_name)],
        "AsyncInferenceConfig": spec.async_inference and spec.async_inference.config(),
        "DataCaptureConfig": spec.capture and spec.capture.config(),
    }
    return AwsCall(
        "sagemaker",
        "CreateEndpointConfig",
        as_api_params("sagemaker", "CreateEndpointConfig", serialize(params)),
    )


def config_facts(spec: EndpointSpec, model_name: str) -> tuple:
    """What the config's name digests; a real-time config keeps the name it had before the options."""
    facts: tuple = (model_name, spec.instance_type, spec.initial_instances)
    for option in (spec.serverless, spec.async_inference, spec.capture):
        if option is not None:
            held = option.config_facts() if isinstance(option, CaptureSpec) else asdict(option)
            facts += (type(option).__name__, held)
    return facts


def update_request(spec: EndpointSpec, config_name: str, alarm_names: list[str]) -> AwsCall:
    params = {
        "EndpointName": spec.endpoint_name,
        "EndpointConfigName": config_name,
        "DeploymentConfig": spec.rollout.deployment_config(alarm_names),
    }
    return AwsCall(
        "sagemaker", "UpdateEndpoint", as_api_params("sagemaker", "UpdateEndpoint", serialize(params))
    )


class EndpointStateError(RuntimeError):
    """The endpoint is in a state deploy cannot move it out of."""


def wait_in_service(aws: Aws, endpoint_name: str, extra_s: int = 0) -> None:
    """Wait (an hour plus `extra_s`) for InService. Raises botocore's WaiterError on failure or timeout."""
    if not aws.dry_run:
        aws.client("sagemaker").get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint_name, WaiterConfig={"Delay": 30, "MaxAttempts": 120 + extra_s // 30}
        )


def describe(operation: str, **params: str) -> AwsCall:
    return AwsCall("sagemaker", operation, params)


def ensure_model(aws: Aws, spec, name_base: str, key_prefix: str, log) -> tuple[str, str]:
    """The repacked archive at `key_prefix/<digest>/model.tar.gz` and a SageMaker model serving it, named
    `name_base-<digest of what it holds>`; both created unless that model exists. Returns (model name,
    model data URL).

    `spec` says where and what: region, role, bucket, model_data, instance_type and image_uri (an
    EndpointSpec or a TransformSpec). Raises botocore's ClientError on AWS errors and tarfile.ReadError when
    its model_data is not a tar.gz.
    """
    source_bucket, source_key = parse_s3_uri(spec.model_data)
    if aws.dry_run:
        archive_digest = "<digest of the repacked archive>"
        repacked: bytes | str = f"<{spec.model_data} repacked with code/ (training/ package, inference.py)>"
    else:
        original = aws.send(AwsCall("s3", "GetObject", {"Bucket": source_bucket, "Key": source_key}))
        repacked = repack_model(original["Body"].read(), log)
        archive_digest = digest(repacked)
    model_key = f"{key_prefix}/{archive_digest}/model.tar.gz"
    model_data_url = f"s3://{spec.bucket}/{model_key}"
    model_name = versioned_name(name_base, spec.image_uri, model_data_url, container_environment(spec))
    if aws.describe(describe("DescribeModel", ModelName=model_name)) is None:
        aws.send(AwsCall("s3", "PutObject", {"Bucket": spec.bucket, "Key": model_key, "Body": repacked}))
        aws.send(model_request(spec, model_name, model_data_url))
        log(f"created model {model_name} from {model_data_url}")
    return model_name, model_data_url


def update_endpoint(
    aws: Aws, spec: EndpointSpec, current: dict, config_name: str, alarm_names: list[str], log
) -> str:
    """Move the endpoint from its current config to `config_name`, blue/green, and wait for the outcome;
    returns the config replaced. Raises EndpointStateError when it has failed or the update rolled back."""
    if current["EndpointStatus"] == "Failed":
        reason = current.get("FailureReason", "no reason given")
        raise EndpointStateError(
            f"endpoint {spec.endpoint_name} has failed ({reason}) and cannot be updated: "
            "run teardown, then deploy again"
        )
    # UpdateEndpoint is refused while the endpoint is still creating or updating.
    wait_in_service(aws, spec.endpoint_name)
    # Application Auto Scaling refuses an update that changes a scaled variant: take the target off first,
    # keeping what it was in case the update rolls back.
    previous_scaling = remove_scaling(aws, spec.endpoint_name, log)
    replaced = current["EndpointConfigName"]
    aws.send(update_request(spec, config_name, alarm_names))
    log(
        f"updating endpoint {spec.endpoint_name} from {replaced} to {config_name}: blue/green, "
        f"{spec.rollout.describe()}, rolled back if {', '.join(alarm_names)} fires"
    )
    wait_in_service(aws, spec.endpoint_name, extra_s=spec.rollout.longest_s)
    after = aws.describe(describe("DescribeEndpoint", EndpointName=spec.endpoint_name))
    if after is not None and after["EndpointConfigName"] != config_name:
        # SageMaker moved the traffic back: the old config serves, so it stays, scaled as before.
        restore_scaling(aws, previous_scaling, log)
        reason = after.get("FailureReason", "no reason given")
        raise EndpointStateError(
            f"the update of {spec.endpoint_name} to {config_name} was rolled back ({reason}); "
            f"{after['EndpointConfigName']} still serves"
        )
    return replaced


def deploy(aws: Aws, spec: EndpointSpec, log) -> dict[str, str]:
    """Create or update the endpoint, its alarms and its auto scaling; returns the names in use.

    Raises botocore's ClientError on AWS errors, tarfile.ReadError when --model-data is not a tar.gz, and
    EndpointStateError when the endpoint has failed or an update was rolled back (the old model still serves).
    """
    key_prefix = f"{spec.prefix.strip('/')}/endpoints/{spec.endpoint_name}"
    model_name, model_data_url = ensure_model(aws, spec, spec.endpoint_name, key_prefix, log)
    config_name = versioned_name(spec.endpoint_name, *config_facts(spec, model_name))

    if aws.describe(describe("DescribeEndpointConfig", EndpointConfigName=config_name)) is None:
        aws.send(endpoint_config_request(spec, config_name, model_name))
        log(f"created endpoint config {config_name} ({spec.kind})")
    if spec.capture is not None:
        expire_prefix(aws, spec.capture.destination, spec.capture.retention_days, log)
    # Made on every deploy, so the next update finds them, and the endpoint's health can be watched meanwhile.
    alarm_names = put_rollback_alarms(aws, spec.endpoint_name, spec.rollout.latency_ms, log)

    current = aws.describe(describe("DescribeEndpoint", EndpointName=spec.endpoint_name))
    replaced = None
    if current is None:
        aws.send(
            AwsCall(
                "sagemaker",
                "CreateEndpoint",
                {"EndpointName": spec.endpoint_name, "EndpointConfigName": config_name},
            )
        )
        log(f"creating endpoint {spec.endpoint_name}")
    elif current["EndpointConfigName"] != config_name:
        replaced = update_endpoint(aws, spec, current, config_name, alarm_names, log)
    else:
        log(f"endpoint {spec.endpoint_name} already runs {config_name}")

    # A scalable target needs the variant in service; real endpoints take minutes to get there.
    wait_in_service(aws, spec.endpoint_name)
    if replaced and re.fullmatch(rf"{re.escape(spec.endpoint_name[:NAME_BASE])}-[0-9a-f]{{{TAG}}}", replaced):
        # Only what this module named for the endpoint; a config made by hand is the user's to remove.
        delete_config_and_models(aws, replaced, log, keep=frozenset({model_name}))
    if spec.serverless is None:
        apply_scaling(aws, spec.scaling, log)
    return {
        "endpoint": spec.endpoint_name,
        "kind": spec.kind,
        "endpoint_config": config_name,
        "model": model_name,
        "model_data": model_data_url,
        "rollback_alarms": alarm_names,
    }


def delete_config_and_models(aws: Aws, config_name: str, log, keep: frozenset[str] = frozenset()) -> None:
    """Delete an endpoint config and the models its variants use, but those in `keep`; skip what is gone."""
    config = aws.describe(describe("DescribeEndpointConfig", EndpointConfigName=config_name))
    if aws.dry_run:
        config = {
            "ProductionVariants": [{"ModelName": "<ModelName of each variant from DescribeEndpointConfig>"}]
        }
    if config is None:
        log(f"endpoint config {config_name} is already gone")
        return
    aws.send(AwsCall("sagemaker", "DeleteEndpointConfig", {"EndpointConfigName": config_name}))
    log(f"deleted endpoint config {config_name}")
    for model in sorted({variant["ModelName"] for variant in config["ProductionVariants"]} - keep):
        if aws.dry_run or aws.describe(describe("DescribeModel", ModelName=model)) is not None:
            aws.send(AwsCall("sagemaker", "DeleteModel", {"ModelName": model}))
            log(f"deleted model {model}")


def teardown(aws: Aws, endpoint_name: str, log) -> bool:
    """Remove scaling, alarms, the endpoint, its endpoint config and models; what is already gone is skipped.

    Returns whether the endpoint existed. Raises botocore's ClientError on AWS errors other than 'not found'.
    """
    remove_scaling(aws, endpoint_name, log)
    delete_alarms(aws, endpoint_name, log)
    endpoint = aws.describe(describe("DescribeEndpoint", EndpointName=endpoint_name))
    if aws.dry_run:
        endpoint = {"EndpointConfigName": "<EndpointConfigName from DescribeEndpoint>"}
    if endpoint is None:
        log(f"endpoint {endpoint_name} does not exist")
        return False
    aws.send(AwsCall("sagemaker", "DeleteEndpoint", {"EndpointName": endpoint_name}))
    log(f"deleted endpoint {endpoint_name}")
    delete_config_and_models(aws, endpoint["EndpointConfigName"], log)
    return True
