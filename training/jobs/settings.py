"""Where the jobs run: region, IAM role and bucket, from flags first, then the usual AWS environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import boto3

ROLE_ENV = "SAGEMAKER_ROLE_ARN"
BUCKET_ENV = "SAGEMAKER_BUCKET"


class SettingsError(Exception):
    """A setting the command needs is missing or malformed; the message says how to provide it."""


@dataclass(frozen=True)
class AwsSettings:
    region: str
    role: str | None
    bucket: str | None

    def require_role(self) -> str:
        if not self.role:
            raise SettingsError(f"no IAM role for SageMaker: pass --role ARN or set {ROLE_ENV}")
        if not self.role.startswith("arn:"):
            raise SettingsError(
                f"--role must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {self.role!r}"
            )
        return self.role

    def require_bucket(self) -> str:
        if not self.bucket:
            raise SettingsError(f"no S3 bucket: pass --bucket NAME or set {BUCKET_ENV}")
        return self.bucket


def resolve_settings(region: str | None, role: str | None, bucket: str | None) -> AwsSettings:
    """Flags win; otherwise AWS_REGION / AWS_DEFAULT_REGION / the profile's region, and the env vars above.

    Raises SettingsError when no region is found: every command needs one (image URIs depend on it).
    """
    # boto3 reads AWS_DEFAULT_REGION and the shared config; AWS runtimes and newer SDKs set AWS_REGION.
    region = region or os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    if not region:
        raise SettingsError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION")
    return AwsSettings(
        region=region,
        role=role or os.environ.get(ROLE_ENV) or None,
        bucket=bucket or os.environ.get(BUCKET_ENV) or None,
    )
