"""A real-time endpoint on the PyTorch inference image, with Application Auto Scaling, created or updated.

Names carry a digest of what they hold (`<endpoint>-<digest>` for the model and the endpoint config), so
deploying the same thing twice finds everything in place and changes nothing, and deploying something new
creates a new model and config and moves the endpoint onto them with UpdateEndpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from sagemaker.core import image_uris, shapes
from sagemaker.core.utils.utils import serialize

from training.jobs.autoscaling import VARIANT, ScalingSpec, apply_scaling, remove_scaling
from training.jobs.calls import Aws, AwsCall
from training.jobs.source_bundle import INFERENCE_ENTRY, digest, repack_model
from training.jobs.storage import parse_s3_uri
from training.jobs.training_job import FRAMEWORK_VERSION, PY_VERSION

MAX_NAME = 63
TAG = 10
NAME_BASE = MAX_NAME - TAG - 1


@dataclass(frozen=True)
class EndpointSpec:
    region: str
    role: str
    bucket: str
    prefix: str
    model_data: str
    instance_type: str
    scaling: ScalingSpec  # names the endpoint; its minimum is also the initial instance count

    @property
    def endpoint_name(self) -> str:
        return self.scaling.endpoint_name

    @property
    def image_uri(self) -> str:
        return image_uris.retrieve(
            "pytorch",
            region=self.region,
            version=FRAMEWORK_VERSION,
            py_version=PY_VERSION,
            instance_type=self.instance_type,
            image_scope="inference",
        )


def versioned_name(base: str, *facts: object) -> str:
    """`base-<digest of facts>`, within SageMaker's 63-character limit."""
    tag = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:TAG]
    return f"{base[:NAME_BASE]}-{tag}"


def container_environment(spec) -> dict[str, str]:
    """How the PyTorch inference toolkit finds the handlers: code/inference.py in the repacked model."""
    return {
        "SAGEMAKER_PROGRAM": INFERENCE_ENTRY,
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": spec.region,
    }


def model_request(spec, model_name: str, model_data_url: str) -> AwsCall:
    params = {
        "ModelName": model_name,
        "ExecutionRoleArn": spec.role,
        "PrimaryContainer": shapes.ContainerDefinition(
            image=spec.image_uri, model_data_url=model_data_url, environment=container_environment(spec)
        ),
    }
    return AwsCall("sagemaker", "CreateModel", serialize(params))


def endpoint_config_request(spec: EndpointSpec, config_name: str, model_name: str) -> AwsCall:
    params = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            shapes.ProductionVariant(
                variant_name=VARIANT,
                model_name=model_name,
                instance_type=spec.instance_type,
                initial_instance_count=spec.scaling.min_instances,
                initial_variant_weight=1.0,
            )
        ],
    }
    return AwsCall("sagemaker", "CreateEndpointConfig", serialize(params))


class EndpointStateError(RuntimeError):
    """The endpoint is in a state deploy cannot move it out of."""


def wait_in_service(aws: Aws, endpoint_name: str) -> None:
    """Wait (up to an hour) for InService. Raises botocore's WaiterError when it fails or takes longer."""
    if not aws.dry_run:
        aws.client("sagemaker").get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint_name, WaiterConfig={"Delay": 30, "MaxAttempts": 120}
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
        repacked = repack_model(original["Body"].read())
        archive_digest = digest(repacked)
    model_key = f"{key_prefix}/{archive_digest}/model.tar.gz"
    model_data_url = f"s3://{spec.bucket}/{model_key}"
    model_name = versioned_name(name_base, spec.image_uri, model_data_url, container_environment(spec))
    if aws.describe(describe("DescribeModel", ModelName=model_name)) is None:
        aws.send(AwsCall("s3", "PutObject", {"Bucket": spec.bucket, "Key": model_key, "Body": repacked}))
        aws.send(model_request(spec, model_name, model_data_url))
        log(f"created model {model_name} from {model_data_url}")
    return model_name, model_data_url


def deploy(aws: Aws, spec: EndpointSpec, log) -> dict[str, str]:
    """Create or update the endpoint and its auto scaling; returns the names in use.

    Raises botocore's ClientError on AWS errors and tarfile.ReadError when --model-data is not a tar.gz.
    """
    key_prefix = f"{spec.prefix.strip('/')}/endpoints/{spec.endpoint_name}"
    model_name, model_data_url = ensure_model(aws, spec, spec.endpoint_name, key_prefix, log)
    config_name = versioned_name(
        spec.endpoint_name, model_name, spec.instance_type, spec.scaling.min_instances
    )

    if aws.describe(describe("DescribeEndpointConfig", EndpointConfigName=config_name)) is None:
        aws.send(endpoint_config_request(spec, config_name, model_name))
        log(f"created endpoint config {config_name}")

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
        if current["EndpointStatus"] == "Failed":
            reason = current.get("FailureReason", "no reason given")
            raise EndpointStateError(
                f"endpoint {spec.endpoint_name} has failed ({reason}) and cannot be updated: "
                "run teardown, then deploy again"
            )
        # UpdateEndpoint is refused while the endpoint is still creating or updating.
        wait_in_service(aws, spec.endpoint_name)
        # Application Auto Scaling refuses an update that changes a scaled variant: take the target off first.
        remove_scaling(aws, spec.endpoint_name, log)
        replaced = current["EndpointConfigName"]
        aws.send(
            AwsCall(
                "sagemaker",
                "UpdateEndpoint",
                {"EndpointName": spec.endpoint_name, "EndpointConfigName": config_name},
            )
        )
        log(f"updating endpoint {spec.endpoint_name} from {current['EndpointConfigName']} to {config_name}")
    else:
        log(f"endpoint {spec.endpoint_name} already runs {config_name}")

    # A scalable target needs the variant in service; real endpoints take minutes to get there.
    wait_in_service(aws, spec.endpoint_name)
    if replaced and re.fullmatch(rf"{re.escape(spec.endpoint_name[:NAME_BASE])}-[0-9a-f]{{{TAG}}}", replaced):
        # Only what this module named for the endpoint; a config made by hand is the user's to remove.
        delete_config_and_models(aws, replaced, log, keep=frozenset({model_name}))
    apply_scaling(aws, spec.scaling, log)
    return {
        "endpoint": spec.endpoint_name,
        "endpoint_config": config_name,
        "model": model_name,
        "model_data": model_data_url,
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
    """Remove scaling, the endpoint, its endpoint config and models; what is already gone is skipped.

    Returns whether the endpoint existed. Raises botocore's ClientError on AWS errors other than 'not found'.
    """
    remove_scaling(aws, endpoint_name, log)
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
