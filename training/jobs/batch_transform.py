"""A Batch Transform job over a folder of images in S3, and the one results file made from its output.

Each S3 object under the input prefix is one record (SplitType None, BatchStrategy SingleRecord): the
container gets the object's bytes with ContentType `application/x-image` and Accept RECORD_JSON, so an
object the handlers cannot classify is answered in place with an error object rather than failing the job.
The job writes `<output>/<key under the input prefix>.out`; once it has ended, this module reads those and
writes one CSV or JSON-lines file with `clients.batch_results.rows_from_outputs`, the step the local command
(`python -m clients.batch --transform-output`) runs on its folder.

The model is `deploy`'s: the same repacked archive and container environment (`endpoint.ensure_model`).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sagemaker.core import shapes
from sagemaker.core.common_utils import name_from_base
from sagemaker.core.utils.utils import serialize

from clients.batch_results import (
    OUT_SUFFIX,
    Summary,
    format_of,
    rows_from_outputs,
    write_rows,
)
from serving.contract import RECORD_JSON, X_IMAGE
from training.jobs.calls import Aws, AwsCall
from training.jobs.deploy import ensure_model, inference_image_uri
from training.jobs.storage import parse_s3_uri

# InvokeEndpoint's payload limit and the local endpoint's: the same photos pass everywhere.
DEFAULT_MAX_PAYLOAD_MB = 6
# One image takes well under a second; a stuck one is cut off and retried, not waited on for SageMaker's
# default of 10 minutes.
INVOCATION_TIMEOUT_S = 60
INVOCATION_RETRIES = 2
DONE = {"Completed", "Failed", "Stopped"}
POLL_S = 30.0
READ_WORKERS = 16
# vCPUs of the usual instance sizes (m5, c5, r5, g4dn, g5, ...): large 2, xlarge 4, Nxlarge 4N.
_SIZE = re.compile(r"^ml\.[a-z0-9-]+\.(?:(\d*)xlarge|(large)|(medium))$")


def instance_vcpus(instance_type: str) -> int | None:
    """The vCPUs of an ml.* instance type from its size name, or None when the name does not tell."""
    match = _SIZE.match(instance_type)
    if not match:
        return None
    multiple, large, medium = match.groups()
    if large:
        return 2
    if medium:
        return 1
    return 4 * int(multiple or 1)


@dataclass(frozen=True)
class TransformSpec:
    region: str
    role: str
    bucket: str  # where the repacked model goes
    prefix: str
    model_data: str
    input_uri: str  # s3://bucket/prefix/ of the images
    output_uri: str  # s3://bucket/prefix/ the job writes key.out to
    instance_type: str
    instance_count: int
    # Model server workers per instance, each on its own CPU, and as many requests in flight to each instance
    # (SageMaker's advice: MaxConcurrentTransforms = the container's workers).
    workers: int
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB

    @property
    def image_uri(self) -> str:
        return inference_image_uri(self.region, self.instance_type)


def folder_uri(uri: str) -> str:
    """`s3://bucket/prefix/` with exactly one trailing slash; raises ValueError for anything not s3://."""
    bucket, key = parse_s3_uri(uri)
    return f"s3://{bucket}/{key.strip('/')}/"


def transform_job_request(spec: TransformSpec, job_name: str, model_name: str) -> AwsCall:
    params = {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "BatchStrategy": "SingleRecord",
        "MaxConcurrentTransforms": spec.workers,
        "MaxPayloadInMB": spec.max_payload_mb,
        "ModelClientConfig": shapes.ModelClientConfig(
            invocations_timeout_in_seconds=INVOCATION_TIMEOUT_S, invocations_max_retries=INVOCATION_RETRIES
        ),
        # The model server reads these; the size also sets TorchServe's request limit.
        "Environment": {
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(spec.workers),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(spec.max_payload_mb),
        },
        "TransformInput": shapes.TransformInput(
            data_source=shapes.TransformDataSource(
                s3_data_source=shapes.TransformS3DataSource(s3_data_type="S3Prefix", s3_uri=spec.input_uri)
            ),
            content_type=X_IMAGE,
            compression_type="None",
            split_type="None",
        ),
        "TransformOutput": shapes.TransformOutput(
            s3_output_path=spec.output_uri, accept=RECORD_JSON, assemble_with="None"
        ),
        "TransformResources": shapes.TransformResources(
            instance_type=spec.instance_type, instance_count=spec.instance_count
        ),
    }
    return AwsCall("sagemaker", "CreateTransformJob", serialize(params))


def list_keys(aws: Aws, uri: str) -> list[str]:
    """The keys under `uri` (a folder URI), relative to it, sorted."""
    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    keys = []
    for page in aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"][len(prefix) :] for item in page.get("Contents", []) if item["Key"] != prefix]
    return sorted(keys)


def read_outputs(aws: Aws, output_uri: str, keys: list[str]) -> dict[str, bytes]:
    """Input key -> its .out's bytes, for the inputs the job wrote one for."""
    bucket, prefix = parse_s3_uri(output_uri)
    prefix = prefix.rstrip("/") + "/"
    written = set(list_keys(aws, output_uri))
    present = [key for key in keys if key + OUT_SUFFIX in written]

    def get(key: str) -> bytes:
        call = AwsCall("s3", "GetObject", {"Bucket": bucket, "Key": prefix + key + OUT_SUFFIX})
        return aws.send(call)["Body"].read()

    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        return dict(zip(present, pool.map(get, present), strict=True))


def wait_for_job(aws: Aws, job_name: str, output_uri: str, inputs: int, log, poll_s: float = POLL_S) -> dict:
    """Poll the job until it ends, logging its status and how many objects have their .out.

    Returns DescribeTransformJob's last answer."""
    describe = AwsCall("sagemaker", "DescribeTransformJob", {"TransformJobName": job_name})
    while True:
        described = aws.send(describe)
        status = described["TransformJobStatus"]
        written = sum(1 for key in list_keys(aws, output_uri) if key.endswith(OUT_SUFFIX))
        log(f"transform job {job_name}: {status}, {written} of {inputs} objects answered")
        if status in DONE:
            return described
        time.sleep(poll_s)


def run_transform(aws: Aws, spec: TransformSpec, job_name: str | None, results: Path | None, log) -> dict:
    """Create the model and the job (or attach to the job of that name), wait for it, write the results.

    Returns the report: job, model, status, failure reason, results file and the summary's counts.
    Raises botocore's ClientError on AWS errors and tarfile.ReadError when model_data is not a tar.gz.
    """
    job_name = job_name or name_from_base("dogbreeds-transform")
    existing = aws.describe(AwsCall("sagemaker", "DescribeTransformJob", {"TransformJobName": job_name}))
    if existing is None:
        key_prefix = f"{spec.prefix.strip('/')}/transform"
        model_name, _ = ensure_model(aws, spec, "dogbreeds-transform", key_prefix, log)
        aws.send(transform_job_request(spec, job_name, model_name))
        log(f"created transform job {job_name}: {spec.input_uri} -> {spec.output_uri}")
    else:
        model_name = existing["ModelName"]
        log(f"transform job {job_name} exists ({existing['TransformJobStatus']}); waiting for it")
    if aws.dry_run:
        return {"job_name": job_name, "model": model_name, "status": "not started (dry run)"}

    inputs = list_keys(aws, spec.input_uri)
    described = wait_for_job(aws, job_name, spec.output_uri, len(inputs), log)
    outputs = read_outputs(aws, spec.output_uri, inputs)
    results = results or Path(f"{job_name}.csv")
    summary = Summary.of(
        write_rows(rows_from_outputs(inputs, outputs.get), results, format_of(results, None))
    )
    log(summary.text())
    return {
        "job_name": job_name,
        "model": model_name,
        "status": described["TransformJobStatus"],
        "failure_reason": described.get("FailureReason"),
        "output": spec.output_uri,
        "results": str(results),
        "summary": summary.as_dict(),
    }
