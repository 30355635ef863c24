"""The job launchers (`python -m training.jobs.cli`) against moto_server: the account they deploy into, an
environment with nothing of the machine's AWS set-up, a trained model in the bucket and what the jobs put
there, and a command run in-process with its report read."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/dogbreeds-sagemaker"
INFERENCE_IMAGE_CPU = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"
AWS_ENV = ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


def isolate_aws_env(monkeypatch, tmp_path: Path) -> None:
    """No region, role, bucket or profile from the machine; only fake credentials."""
    for name in (*AWS_ENV, "SAGEMAKER_ROLE_ARN", "SAGEMAKER_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def is_loopback(host) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


def uploaded_model(aws, model_dir: Path, job_name: str) -> str:
    """`model_dir` as training job `job_name`'s model.tar.gz in the bucket; returns its S3 URI."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    key = f"dogbreeds/output/{job_name}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{aws.bucket}/{key}"


def tar_members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


def s3_object(aws, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def run_jobs(capsys, *argv: str) -> SimpleNamespace:
    # Imported here: the launchers bring in the SageMaker SDK (seconds), which only the jobs tests need, and
    # conftest imports this module.
    from training.jobs.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


def report(result: SimpleNamespace) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


def scaling_state(aws, name: str) -> tuple[list, list]:
    resource_id = f"endpoint/{name}/variant/AllTraffic"
    targets = aws.autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id]
    )
    policies = aws.autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)
    return targets["ScalableTargets"], policies["ScalingPolicies"]
