"""S3 locations and the upload of an ImageFolder tree (`root/<split>/<class folder>/<image>`)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from training.jobs.calls import Aws, AwsCall

SPLITS = ("train", "valid", "test")


class DataLayoutError(ValueError):
    """The directory is not an ImageFolder tree with at least a train split."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). Raises ValueError for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"expected s3://BUCKET/KEY, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def expiry_rule_id(prefix: str) -> str:
    # S3 caps a rule's ID at 255 characters; a prefix names at most one expiry rule of ours.
    return f"dogbreeds-expire {prefix}"[:255]


def expire_prefix(aws: Aws, uri: str, days: int, log) -> None:
    """A lifecycle rule deleting each object under `uri` `days` after it was written (and a versioned
    bucket's old versions a day after they are replaced). The bucket's other rules are kept: a bucket has
    one lifecycle configuration, which PutBucketLifecycleConfiguration replaces whole."""
    bucket, key = parse_s3_uri(uri)
    prefix = key.strip("/") + "/"
    rule = {
        "ID": expiry_rule_id(prefix),
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "Expiration": {"Days": days},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    rules = [] if aws.dry_run else _lifecycle_rules(aws, bucket)
    kept = [existing for existing in rules if existing.get("ID") != rule["ID"]]
    if rule in rules:
        log(f"s3://{bucket}/{prefix} already expires after {days} days")
        return
    aws.send(
        AwsCall(
            "s3",
            "PutBucketLifecycleConfiguration",
            {"Bucket": bucket, "LifecycleConfiguration": {"Rules": [*kept, rule]}},
        )
    )
    log(f"s3://{bucket}/{prefix}: each object expires {days} days after it is written")


def _lifecycle_rules(aws: Aws, bucket: str) -> list[dict]:
    try:
        return aws.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return []
        raise


def image_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative key, path) of every file under the split folders present, in a stable order.

    Raises DataLayoutError when `root` has no train/ folder of class folders.
    """
    if not (root / "train").is_dir() or not any(path.is_dir() for path in (root / "train").iterdir()):
        raise DataLayoutError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class folder>/<image>"
        )
    for split in SPLITS:
        for path in sorted((root / split).glob("*/*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(root).as_posix(), path


def existing_sizes(aws: Aws, bucket: str, prefix: str) -> dict[str, int]:
    """Key -> size of what is already under the prefix, so a repeated upload sends only what changed."""
    if aws.dry_run:
        return {}
    sizes: dict[str, int] = {}
    for page in (
        aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    ):
        sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return sizes


def upload_image_folder(aws: Aws, root: Path, bucket: str, prefix: str, workers: int = 16) -> tuple[int, int]:
    """Put every image under `s3://bucket/prefix/<split>/...`; returns (uploaded, skipped as unchanged)."""
    prefix = prefix.strip("/")
    present = existing_sizes(aws, bucket, prefix)
    calls = []
    for relative, path in image_files(root):
        key = f"{prefix}/{relative}"
        if present.get(key) != path.stat().st_size:
            calls.append(AwsCall("s3", "PutObject", {"Bucket": bucket, "Key": key, "Body": path}))
    total = sum(1 for _ in image_files(root))
    if aws.dry_run:
        for call in calls:
            aws.send(call)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(aws.send, calls))
    return len(calls), total - len(calls)
