"""Promotion and rollback of Model Registry packages: which package each stage's endpoint serves.

`promote` approves a package, deploys its archive with `deploy` (blue/green, canary, rollback alarms) with the
package named in the SageMaker Model's environment (so the endpoint's answers and /ping name its version),
and records the stage's promotion. `rollback` redeploys the package the stage ran before and rejects the one
it replaces, so the pipeline's gate compares new models with the last good one again.

The record: `s3://BUCKET/PREFIX/stages/<stage>.json`, one small JSON object per stage:

    {"stage": "prod", "endpoint": "dogbreeds-prod", "package": ARN, "version": 7,
     "deployed": [ARN of v3, ARN of v7],          # what rollback goes back through, newest last
     "history": [{"action": "promote", "package": ARN, "version": 7, "at": "2026-..."}, ...]}

S3 rather than tags on the endpoint or the packages: the order of promotions is the point of the record and
tags have none, and one object per stage is read and written whole by one command. What an endpoint serves
at this moment is also in its Model's environment; the record is its history.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

from training.jobs.calls import Aws, AwsCall
from training.jobs.deploy import EndpointStateError
from training.jobs.pipeline import APPROVED, REJECTED

STAGES = ("dev", "prod")


class PromotionError(ValueError):
    """The package cannot be promoted, or the stage has nothing to roll back to."""


def record_key(prefix: str, stage: str) -> str:
    return f"{prefix.strip('/')}/stages/{stage}.json"


def read_record(aws: Aws, bucket: str, key: str) -> dict | None:
    """The stage's record, or None when it has none (and in a dry run)."""
    found = aws.describe(AwsCall("s3", "GetObject", {"Bucket": bucket, "Key": key}))
    return None if found is None else json.loads(found["Body"].read())


def describe_package(aws: Aws, arn: str) -> dict:
    """DescribeModelPackage's answer (in a dry run, placeholders for what the commands read from it)."""
    described = aws.send(AwsCall("sagemaker", "DescribeModelPackage", {"ModelPackageName": arn}))
    if aws.dry_run:
        container = {"ModelDataUrl": "s3://<ModelDataUrl from DescribeModelPackage>/model.tar.gz"}
        return {
            "ModelPackageArn": arn,
            "ModelPackageVersion": "<ModelPackageVersion>",
            "ModelApprovalStatus": "<ModelApprovalStatus>",
            "InferenceSpecification": {"Containers": [container]},
        }
    return described


def set_status(aws: Aws, arn: str, status: str, why: str, log) -> None:
    aws.send(
        AwsCall(
            "sagemaker",
            "UpdateModelPackage",
            {"ModelPackageArn": arn, "ModelApprovalStatus": status, "ApprovalDescription": why[:1024]},
        )
    )
    log(f"model package {arn}: {status} ({why})")


def deploy_package(aws: Aws, package: dict, deploy: Callable[[str, str, str], dict], log) -> dict:
    """Deploy the package's archive, the package named on the model; a rolled-back update rejects it."""
    arn, version = package["ModelPackageArn"], str(package["ModelPackageVersion"])
    model_data = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    try:
        return deploy(model_data, arn, version)
    except EndpointStateError as error:
        set_status(aws, arn, REJECTED, f"its deployment was rolled back: {error}", log)
        raise


def write_record(aws: Aws, bucket: str, key: str, record: dict, action: str, package: dict) -> dict:
    version = package["ModelPackageVersion"]
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record.update(package=package["ModelPackageArn"], version=version)
    entry = {"action": action, "package": package["ModelPackageArn"], "version": version, "at": at}
    record["history"].append(entry)
    body = (json.dumps(record, indent=1) + "\n").encode()
    aws.send(AwsCall("s3", "PutObject", {"Bucket": bucket, "Key": key, "Body": body}))
    return record


def promote(aws: Aws, arn: str, stage: str, endpoint: str, where: tuple[str, str], deploy, log) -> dict:
    """Approve the package, deploy it on the stage's endpoint, record it; returns the deploy's report and
    the record. `where` is (bucket, key) of the record; `deploy(model_data, package_arn, version)` deploys.

    Raises PromotionError for a rejected package, and what `deploy` raises."""
    package = describe_package(aws, arn)
    if package["ModelApprovalStatus"] == REJECTED:
        raise PromotionError(
            f"model package {arn} is Rejected ({package.get('ApprovalDescription', 'no reason given')})"
        )
    if package["ModelApprovalStatus"] != APPROVED:
        set_status(aws, arn, APPROVED, f"promoted to {stage}", log)
    deployed = deploy_package(aws, package, deploy, log)
    record = read_record(aws, *where) or {"stage": stage, "endpoint": endpoint, "deployed": [], "history": []}
    record["endpoint"] = endpoint
    if record["deployed"][-1:] != [arn]:
        record["deployed"].append(arn)
    record = write_record(aws, *where, record, "promote", package)
    log(f"stage {stage} runs model package {arn} (version {package['ModelPackageVersion']})")
    return {**deployed, "package": arn, "version": package["ModelPackageVersion"], "record": record}


def rollback(aws: Aws, stage: str, where: tuple[str, str], deploy, log) -> dict:
    """Redeploy the package the stage ran before its current one, reject the current one, record it.

    Raises PromotionError when the stage has no earlier package, and what `deploy` raises."""
    record = read_record(aws, *where)
    if aws.dry_run:
        record = {"stage": stage, "deployed": ["<previous package>", "<current package>"], "history": []}
    if record is None or len(record["deployed"]) < 2:
        raise PromotionError(f"stage {stage} has no earlier model package to roll back to")
    current, previous = record["deployed"][-1], record["deployed"][-2]
    package = describe_package(aws, previous)
    deployed = deploy_package(aws, package, deploy, log)
    set_status(aws, current, REJECTED, f"rolled back from {stage}", log)
    record["deployed"].pop()
    record = write_record(aws, *where, record, "rollback", package)
    log(f"stage {stage} runs model package {previous} again; {current} is Rejected")
    return {**deployed, "package": previous, "replaced": current, "record": record}
