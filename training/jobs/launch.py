"""Start training and tuning jobs: ship the code, create the job, report what SageMaker says about it."""

from __future__ import annotations

import time

from sagemaker.core.common_utils import name_from_base

from training.jobs.calls import Aws, AwsCall
from training.jobs.source_bundle import digest, source_archive
from training.jobs.training_job import JobSpec, SearchSpace, training_job_request, tuning_job_request

TUNING_NAME_LIMIT = 32  # SageMaker's limit for tuning job names (training jobs get 63)
TUNING_DONE = {"Completed", "Failed", "Stopped"}


def upload_code(aws: Aws, spec: JobSpec) -> str:
    """Put sourcedir.tar.gz under a key named by its digest (same code, same key); returns its S3 URI."""
    archive = source_archive()
    key = f"{spec.prefix.strip('/')}/code/{digest(archive)}/sourcedir.tar.gz"
    aws.send(AwsCall("s3", "PutObject", {"Bucket": spec.bucket, "Key": key, "Body": archive}))
    return f"s3://{spec.bucket}/{key}"


def start_training(aws: Aws, spec: JobSpec, hyperparameters: dict[str, str], job_name: str | None) -> dict:
    """Create the training job; returns its name, status and model artifact URI (known before it finishes)."""
    job_name = job_name or name_from_base("dogbreeds-train")
    code_uri = upload_code(aws, spec)
    aws.send(training_job_request(spec, job_name, code_uri, hyperparameters))
    described = aws.describe(AwsCall("sagemaker", "DescribeTrainingJob", {"TrainingJobName": job_name})) or {}
    artifact = described.get("ModelArtifacts", {}).get("S3ModelArtifacts") or (
        f"{spec.s3('output')}/{job_name}/output/model.tar.gz"
    )
    return {
        "job_name": job_name,
        "status": described.get("TrainingJobStatus", "not started (dry run)"),
        "model_data": artifact,
    }


def start_tuning(
    aws: Aws,
    spec: JobSpec,
    space: SearchSpace,
    max_jobs: int,
    max_parallel: int,
    static_hyperparameters: dict[str, str],
    tuning_name: str | None,
    wait_s: float = 0,
    poll_s: float = 60,
) -> dict:
    """Create the tuning job, optionally wait up to `wait_s` for it, and report its best training job.

    The best job is DescribeHyperParameterTuningJob's `BestTrainingJob`; None while no job has finished.
    """
    tuning_name = tuning_name or name_from_base("dogbreeds-tune", max_length=TUNING_NAME_LIMIT, short=True)
    code_uri = upload_code(aws, spec)
    aws.send(
        tuning_job_request(spec, tuning_name, code_uri, space, max_jobs, max_parallel, static_hyperparameters)
    )
    describe = AwsCall(
        "sagemaker", "DescribeHyperParameterTuningJob", {"HyperParameterTuningJobName": tuning_name}
    )
    described = aws.describe(describe) or {}
    deadline = time.monotonic() + wait_s
    while (
        described
        and described["HyperParameterTuningJobStatus"] not in TUNING_DONE
        and time.monotonic() < deadline
    ):
        time.sleep(poll_s)
        described = aws.send(describe)
    best = described.get("BestTrainingJob") or {}
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    return {
        "tuning_job": tuning_name,
        "status": described.get("HyperParameterTuningJobStatus", "not started (dry run)"),
        "counters": described.get("TrainingJobStatusCounters", {}),
        "best_training_job": best.get("TrainingJobName"),
        "best_hyperparameters": best.get("TunedHyperParameters", {}),
        "best_objective": {"metric": metric.get("MetricName"), "value": metric.get("Value")}
        if metric
        else None,
        "best_model_data": (
            f"{spec.s3('output')}/{best['TrainingJobName']}/output/model.tar.gz"
            if best.get("TrainingJobName")
            else None
        ),
    }
