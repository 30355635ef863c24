"""What a Chalice stage must know about the endpoint it calls, written by `deploy --chalice-stage STAGE`.

The deployed model is the one source of these facts; the stage's environment in .chalice/config.json carries
them to the Lambda (chalicelib/settings.py reads them):
- MODEL_RESIZE_SIZE: the shorter side the model resizes to (its config.json, preprocessing.resize_size), so
  the Lambda sends neither more pixels than the model uses nor fewer than it needs;
- ENDPOINT_KIND: real-time, serverless or async, i.e. whether to call InvokeEndpoint or queue the photo;
- ASYNC_INPUT_S3: for async, where the Lambda puts the photos it queues;
- ASYNC_OUTPUT_S3 and ASYNC_FAILURE_S3: for async, where SageMaker writes answers and failures (the endpoint
  config's output paths), which GET /predict/results reads.
The stage's IAM policy file gets exactly the grants that kind needs on this endpoint (and nothing else is
touched): InvokeEndpoint; or for async PutObject under the input prefix and for the Lambda's tickets
(OUTPUT/requests/, chalicelib/queued.py), InvokeEndpointAsync, and GetObject plus ListBucket (so that a
missing result reads as missing) under the output and failure prefixes only.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import NamedTuple

from training.jobs.storage import parse_s3_uri

ENDPOINT_NAME_ENV = "ENDPOINT_NAME"
RESIZE_ENV = "MODEL_RESIZE_SIZE"
KIND_ENV = "ENDPOINT_KIND"
ASYNC_INPUT_ENV = "ASYNC_INPUT_S3"
ASYNC_OUTPUT_ENV = "ASYNC_OUTPUT_S3"
ASYNC_FAILURE_ENV = "ASYNC_FAILURE_S3"
ASYNC_ENVS = (ASYNC_INPUT_ENV, ASYNC_OUTPUT_ENV, ASYNC_FAILURE_ENV)
# The Lambda's tickets of queued requests, under the output prefix (chalicelib/settings.py has its copy, held
# equal by a test: the Lambda ships alone).
TICKETS_FOLDER = "requests"
INVOKE_SID = "InvokeThisStagesEndpoint"
QUEUE_SID = "QueuePhotosForThisStagesEndpoint"
INVOKE_ASYNC_SID = "InvokeThisStagesAsyncEndpoint"
READ_RESULTS_SID = "ReadThisStagesAsyncResults"
FIND_RESULTS_SID = "FindThisStagesAsyncResults"
MANAGED_SIDS = (INVOKE_SID, QUEUE_SID, INVOKE_ASYNC_SID, READ_RESULTS_SID, FIND_RESULTS_SID)


class AsyncLocations(NamedTuple):
    """An async stage's S3 prefixes (s3://BUCKET/PREFIX): the photos it queues, the answers, the failures."""

    input: str
    output: str
    failure: str

    def environment(self) -> dict[str, str]:
        return dict(zip(ASYNC_ENVS, self, strict=True))


class StageError(ValueError):
    """The stage is missing, or serves another endpoint than the one deployed."""


def model_resize_size(model_archive: bytes) -> int:
    """preprocessing.resize_size of the config.json in a model.tar.gz.

    Raises ValueError when the archive has no config.json or it has no positive resize size.
    """
    with tarfile.open(fileobj=io.BytesIO(model_archive), mode="r:*") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.removeprefix("./") == "config.json":
                config = json.loads(archive.extractfile(member).read())
                break
        else:
            raise ValueError("the model archive has no config.json")
    size = config.get("preprocessing", {}).get("resize_size")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"the model's config.json has no positive preprocessing.resize_size ({size!r})")
    return size


def endpoint_arn(endpoint_name: str) -> str:
    # SageMaker writes endpoint names into ARNs in lower case.
    return f"arn:aws:sagemaker:*:*:endpoint/{endpoint_name.lower()}"


def policy_statements(endpoint_name: str, kind: str, places: AsyncLocations | None) -> list[dict]:
    """The grants a stage's Lambda needs to call the endpoint, and no more."""
    if kind != "async":
        return [_allow(INVOKE_SID, "sagemaker:InvokeEndpoint", endpoint_arn(endpoint_name))]
    (input_bucket, input_prefix), output, failure = (
        _bucket_and_prefix(uri) for uri in (places.input, places.output, places.failure)
    )
    tickets = f"{output[1]}/{TICKETS_FOLDER}"
    results = (output, failure)
    return [
        _allow(
            QUEUE_SID,
            "s3:PutObject",
            [_object_arn(input_bucket, input_prefix), _object_arn(output[0], tickets)],
        ),
        _allow(INVOKE_ASYNC_SID, "sagemaker:InvokeEndpointAsync", endpoint_arn(endpoint_name)),
        _allow(READ_RESULTS_SID, "s3:GetObject", [_object_arn(*place) for place in results]),
        {
            **_allow(
                FIND_RESULTS_SID,
                "s3:ListBucket",
                sorted({f"arn:aws:s3:::{bucket}" for bucket, _ in results}),
            ),
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*" for _, prefix in results]}},
        },
    ]


def _allow(sid: str, action: str, resource: str | list[str]) -> dict:
    return {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    bucket, prefix = parse_s3_uri(uri)
    return bucket, prefix.strip("/")


def _object_arn(bucket: str, prefix: str) -> str:
    return f"arn:aws:s3:::{bucket}/{prefix}/*"


def check_stage(
    chalice_dir: Path, stage: str, endpoint_name: str, kind: str, async_input: str | None
) -> dict:
    """The stage's config, if the stage exists, calls `endpoint_name` and, for async, has an input location.

    Raises StageError or, for a missing or malformed --async-input, ValueError.
    """
    config_path = chalice_dir / "config.json"
    stages = json.loads(config_path.read_text()).get("stages", {})
    if stage not in stages:
        raise StageError(f"{config_path} has no stage {stage!r} (it has {', '.join(sorted(stages))})")
    current = stages[stage].get("environment_variables", {}).get(ENDPOINT_NAME_ENV)
    if current != endpoint_name:
        raise StageError(
            f"stage {stage!r} calls endpoint {current!r}, not {endpoint_name!r}: "
            f"deploy to that endpoint or change the stage's {ENDPOINT_NAME_ENV} first"
        )
    if kind == "async":
        if not async_input:
            raise ValueError("--chalice-stage for an async endpoint needs --async-input s3://BUCKET/PREFIX")
        parse_s3_uri(async_input)
    return stages[stage]


def update_stage(
    chalice_dir: Path,
    stage: str,
    *,
    endpoint_name: str,
    kind: str,
    resize_size: int | None,
    places: AsyncLocations | None,
    dry_run: bool,
    log,
) -> dict[str, str]:
    """Write the endpoint's facts into the stage's environment and policy; returns the environment written.

    `resize_size` None (a dry run, which reads no archive) writes nothing. Raises what `check_stage` raises.
    """
    check_stage(chalice_dir, stage, endpoint_name, kind, places and places.input)
    config_path = chalice_dir / "config.json"
    config = json.loads(config_path.read_text())
    settings = config["stages"][stage]
    environment = settings.setdefault("environment_variables", {})
    written = {
        RESIZE_ENV: str(resize_size)
        if resize_size is not None
        else "<resize_size of the model's config.json>",
        KIND_ENV: kind,
    }
    if kind == "async":
        written.update(places.environment())
    if dry_run or resize_size is None:
        log(f"write {', '.join(f'{k}={v}' for k, v in written.items())} into stage {stage} of {config_path}")
        return written
    for name in ASYNC_ENVS:
        environment.pop(name, None)
    environment.update(written)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log(f"stage {stage}: {', '.join(f'{k}={v}' for k, v in written.items())}")
    policy_file = settings.get("iam_policy_file")
    if policy_file:
        write_policy(chalice_dir / policy_file, policy_statements(endpoint_name, kind, places))
        log(f"stage {stage}: {policy_file} grants what a {kind} endpoint needs")
    return written


def write_policy(policy_path: Path, statements: list[dict]) -> None:
    """The policy file with `statements` in the place of the ones this module manages; the rest kept."""
    policy = json.loads(policy_path.read_text())
    kept = [statement for statement in policy["Statement"] if statement.get("Sid") not in MANAGED_SIDS]
    policy["Statement"] = statements + kept
    policy_path.write_text(json.dumps(policy, indent=2) + "\n")
