"""SageMaker jobs of the dog-breed classifier: upload-data, train, tune, deploy, teardown, transform, and the
model registry's pipeline, promote and rollback (docs/registry.md).

Region, role and bucket come from --region/--role/--bucket or AWS_REGION (AWS_DEFAULT_REGION, the
profile), SAGEMAKER_ROLE_ARN and SAGEMAKER_BUCKET. Every command takes --dry-run: it prints the AWS
requests as JSON lines and connects nowhere. A typical run:

  python -m training.jobs upload-data --data ../shared/data/dogs
  python -m training.jobs tune --max-jobs 12 --max-parallel 2
  python -m training.jobs train --instance-type ml.g5.2xlarge --instance-count 2 \\
      --hyperparameters backbone=efficientnet-lite2 epochs=10 batch-size=128 lr=0.001
  python -m training.jobs deploy --model-data s3://BUCKET/dogbreeds/output/JOB/output/model.tar.gz \\
      --endpoint-name dogbreeds-dev --min-instances 2 --max-instances 4 --target-invocations 100 \\
      --canary-percent 10 --bake-minutes 10 --capture-percent 5 --capture-s3 s3://BUCKET/capture \\
      --chalice-stage dev
  python -m training.jobs deploy ... --serverless-memory 3072 --max-concurrency 10
  python -m training.jobs deploy ... --async-output s3://BUCKET/async/out \\
      --chalice-stage dev --async-input s3://BUCKET/async/in
  python -m training.jobs teardown --endpoint-name dogbreeds
  python -m training.jobs transform --model-data s3://BUCKET/.../model.tar.gz \\
      --input s3://BUCKET/photos/ --output s3://BUCKET/photos-out/ --instance-count 2 --results photos.csv
  python -m training.jobs pipeline upsert --hyperparameters backbone=efficientnet-lite0 epochs=10
  python -m training.jobs pipeline start --margin 0.01
  python -m training.jobs pipeline status
  python -m training.jobs promote --package arn:aws:sagemaker:...:model-package/dogbreeds/3 --stage prod \\
      --min-instances 2 --canary-percent 10
  python -m training.jobs rollback --stage prod --min-instances 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from training.jobs import batch_transform, chalice_stage, deploy, launch, pipeline, registry, storage
from training.jobs.autoscaling import ScalingSpec
from training.jobs.calls import Aws, AwsCall
from training.jobs.hosting import (
    DEFAULT_CAPTURE_RETENTION_DAYS,
    AsyncSpec,
    CaptureSpec,
    RolloutSpec,
    ServerlessSpec,
)
from training.jobs.settings import AwsSettings, SettingsError, resolve_settings
from training.jobs.source_bundle import PROJECT_DIR
from training.jobs.training_job import BACKBONES, DISTRIBUTIONS, DistributionError, JobSpec, SearchSpace

DEFAULT_PREFIX = "dogbreeds"
DEFAULT_DATA_PREFIX = "dogbreeds/data"
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.large"
DEFAULT_MAX_INSTANCES = 4
DEFAULT_PIPELINE = "dogbreeds"
DEFAULT_PACKAGE_GROUP = "dogbreeds"
CHALICE_DIR = PROJECT_DIR / ".chalice"
EXIT_USAGE = 2
EXIT_AWS = 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.lstrip("-"), value


def endpoint_name(text: str) -> str:
    # SageMaker's own rule for endpoint names, checked here so a typo fails before anything is uploaded.
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SageMaker endpoint name (letters, digits, hyphens)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)"
    )
    common.add_argument("--role", help="SageMaker execution role ARN (default: $SAGEMAKER_ROLE_ARN)")
    common.add_argument("--bucket", help="S3 bucket for data, code and models (default: $SAGEMAKER_BUCKET)")
    common.add_argument(
        "--dry-run", action="store_true", help="print the AWS requests as JSON lines; send none"
    )

    parser = argparse.ArgumentParser(
        prog="python -m training.jobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    upload = commands.add_parser("upload-data", parents=[common], help="put an ImageFolder tree into S3")
    upload.add_argument("--data", type=Path, required=True, help="folder holding train/, valid/ (and test/)")
    upload.add_argument("--prefix", default=DEFAULT_DATA_PREFIX, help="S3 key prefix (default: %(default)s)")
    upload.add_argument("--workers", type=positive_int, default=16, help="parallel uploads")

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--instance-type", default="ml.m5.xlarge")
    job.add_argument("--instance-count", type=positive_int, default=1)
    job.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="auto",
        help="multi-instance launch: torchrun (GPU/Trainium only), hosts (the script's own SM_HOSTS "
        "bootstrap, any instance), auto: torchrun on GPU, hosts on CPU",
    )
    job.add_argument(
        "--hyperparameters",
        nargs="*",
        type=key_value,
        default=[],
        metavar="NAME=VALUE",
        help="flags of training/train.py, e.g. backbone=efficientnet-lite0 epochs=10 batch-size=64",
    )
    job.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="S3 prefix for code and output (default: %(default)s)"
    )
    job.add_argument("--data-prefix", default=DEFAULT_DATA_PREFIX, help="where upload-data put the data")
    job.add_argument("--volume-gb", type=positive_int, default=30)
    job.add_argument("--max-runtime", type=positive_int, default=24 * 3600, help="seconds")

    train = commands.add_parser("train", parents=[common, job], help="start a training job")
    train.add_argument("--job-name")

    tune = commands.add_parser("tune", parents=[common, job], help="start a hyperparameter tuning job")
    tune.add_argument("--max-jobs", type=positive_int, default=12)
    tune.add_argument("--max-parallel", type=positive_int, default=2)
    tune.add_argument("--tuning-job-name")
    tune.add_argument(
        "--lr-range", type=positive_float, nargs=2, default=(1e-4, 3e-2), metavar=("MIN", "MAX")
    )
    tune.add_argument("--epochs-range", type=positive_int, nargs=2, default=(3, 15), metavar=("MIN", "MAX"))
    tune.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[32, 64, 128])
    tune.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    tune.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to this long for the tuning job to finish before reporting (default: 0)",
    )

    add_deploy_parser(commands, common)
    add_registry_parsers(commands, common, job)

    teardown = commands.add_parser("teardown", parents=[common], help="remove the endpoint and its scaling")
    teardown.add_argument("--endpoint-name", type=endpoint_name, required=True)
    add_transform_parser(commands, common)
    return parser


def add_transform_parser(commands, common: argparse.ArgumentParser) -> None:
    batch = commands.add_parser(
        "transform",
        parents=[common],
        help="classify every image under an S3 prefix with a Batch Transform job; one results file",
    )
    batch.add_argument("--model-data", required=True, help="s3://.../model.tar.gz written by a training job")
    batch.add_argument(
        "--input", required=True, help="s3://BUCKET/PREFIX/ holding the images (one per object)"
    )
    batch.add_argument("--output", required=True, help="s3://BUCKET/PREFIX/ for the job's KEY.out answers")
    batch.add_argument("--instance-type", default="ml.m5.xlarge")
    batch.add_argument("--instance-count", type=positive_int, default=1)
    batch.add_argument(
        "--workers",
        type=positive_int,
        help="model server workers per instance, and requests in flight to each (default: its vCPUs)",
    )
    batch.add_argument(
        "--max-payload-mb",
        type=positive_int,
        default=batch_transform.DEFAULT_MAX_PAYLOAD_MB,
        help="largest image object, in MB (default: %(default)s, InvokeEndpoint's own limit)",
    )
    batch.add_argument("--job-name", help="name of the job; an existing job of that name is waited for")
    batch.add_argument(
        "--results",
        type=Path,
        help="the results file written when the job ends, .csv or .jsonl (default: JOB_NAME.csv)",
    )
    batch.add_argument("--prefix", default=DEFAULT_PREFIX, help="S3 prefix for the repacked model")


def add_deploy_parser(commands, common: argparse.ArgumentParser) -> None:
    deploy = commands.add_parser(
        "deploy",
        parents=[common],
        help="create or update the endpoint, its alarms and its scaling",
        description="Real-time instances by default; --serverless-memory or --async-output pick another "
        "hosting; an existing endpoint is updated blue/green and rolls back when its alarms fire.",
    )
    deploy.add_argument("--model-data", required=True, help="s3://.../model.tar.gz written by a training job")
    deploy.add_argument("--endpoint-name", type=endpoint_name, required=True)
    add_hosting_options(deploy)
    deploy.add_argument(
        "--chalice-stage",
        metavar="STAGE",
        help="write the model's resize size and the endpoint's kind into this stage of .chalice/config.json "
        "(and the grants its kind needs into the stage's policy file)",
    )


def add_hosting_options(deploy: argparse.ArgumentParser) -> None:
    """The endpoint's flags, shared by deploy, promote and rollback."""
    deploy.add_argument(
        "--instance-type", help=f"default: {DEFAULT_ENDPOINT_INSTANCE} (none when serverless)"
    )
    deploy.add_argument(
        "--min-instances", type=non_negative_int, help="default: 1; 0 (the default) for async: scale to zero"
    )
    deploy.add_argument("--max-instances", type=positive_int, help="default: 4")
    deploy.add_argument(
        "--target-invocations",
        type=positive_float,
        default=100.0,
        help="invocations per instance per minute that auto scaling aims for",
    )
    deploy.add_argument("--scale-in-cooldown", type=positive_int, default=300, help="seconds")
    deploy.add_argument("--scale-out-cooldown", type=positive_int, default=60, help="seconds")
    deploy.add_argument("--prefix", default=DEFAULT_PREFIX, help="S3 prefix for the repacked model")

    serverless = deploy.add_argument_group("Serverless Inference (CPU, pay per request, scales to zero)")
    serverless.add_argument("--serverless-memory", type=int, metavar="MB", help="1024, 2048, ... 6144")
    serverless.add_argument("--max-concurrency", type=int, metavar="N", help="concurrent requests, 1..200")
    serverless.add_argument(
        "--provisioned-concurrency",
        type=int,
        metavar="N",
        help="requests kept warm, 1..--max-concurrency: no cold start for them, billed while idle",
    )

    queued = deploy.add_argument_group(
        "Asynchronous Inference (queued requests, results in S3, scales to zero)"
    )
    queued.add_argument("--async-output", metavar="S3_URI", help="where SageMaker writes each result")
    queued.add_argument("--async-success-topic", metavar="SNS_ARN", help="SNS topic told of each result")
    queued.add_argument("--async-error-topic", metavar="SNS_ARN", help="SNS topic told of each failure")
    queued.add_argument(
        "--target-backlog",
        type=positive_float,
        default=5.0,
        help="queued requests per instance that auto scaling aims for (default: %(default)s)",
    )

    add_capture_and_rollout_arguments(deploy)

    # deploy names the stage with --chalice-stage, promote and rollback with --stage.
    stage = deploy.add_argument_group("The API stage that calls the endpoint")
    stage.add_argument(
        "--async-input", metavar="S3_URI", help="async: where the stage's Lambda puts the photos it queues"
    )
    stage.add_argument(
        "--chalice-dir", type=Path, default=CHALICE_DIR, help="the .chalice folder (default: this project's)"
    )


def add_capture_and_rollout_arguments(deploy: argparse.ArgumentParser) -> None:
    capture = deploy.add_argument_group("Data capture (a share of requests and answers, to S3)")
    capture.add_argument("--capture-percent", type=int, metavar="P", help="1..100")
    capture.add_argument("--capture-s3", metavar="S3_URI", help="where the captured data goes")
    capture.add_argument(
        "--capture-retention-days",
        type=positive_int,
        default=DEFAULT_CAPTURE_RETENTION_DAYS,
        metavar="DAYS",
        help="S3 deletes each captured object this long after it is written (default: %(default)s)",
    )

    rollout = deploy.add_argument_group("Updates of an existing endpoint: blue/green with automatic rollback")
    rollout.add_argument(
        "--canary-percent",
        type=int,
        metavar="P",
        help="share of capacity that takes traffic first (1..50); default: all at once",
    )
    rollout.add_argument(
        "--bake-minutes",
        type=non_negative_int,
        default=10,
        help="alarms watched after each traffic step before the next (0..60, default: %(default)s)",
    )
    rollout.add_argument(
        "--rollback-latency-ms",
        type=positive_float,
        default=2000.0,
        help="p99 model latency that rolls an update back (default: %(default)s)",
    )


def add_registry_parsers(commands, common: argparse.ArgumentParser, job: argparse.ArgumentParser) -> None:
    flow = commands.add_parser(
        "pipeline",
        parents=[common, job],
        help="the SageMaker Pipeline: train, evaluate on test/, gate, register (docs/registry.md)",
    )
    flow.add_argument("action", choices=("upsert", "start", "status"))
    flow.add_argument("--pipeline-name", default=DEFAULT_PIPELINE, help="default: %(default)s")
    flow.add_argument("--package-group", default=DEFAULT_PACKAGE_GROUP, help="default: %(default)s")
    flow.add_argument("--evaluation-instance-type", default="ml.m5.xlarge", help="the evaluation job's")
    flow.add_argument(
        "--margin",
        type=fraction,
        default=pipeline.DEFAULT_MARGIN,
        help="start: how much lower than the approved package's test top-1 a new model may score and still "
        "be registered (default: %(default)s)",
    )
    flow.add_argument(
        "--max-ece",
        type=fraction,
        default=pipeline.DEFAULT_MAX_ECE,
        help="start: the highest calibrated expected calibration error registered (default: %(default)s)",
    )
    flow.add_argument("--execution", metavar="ARN", help="status: this run (default: the newest)")

    for name, help_text in (
        ("promote", "approve a model package and deploy it on a stage's endpoint"),
        ("rollback", "redeploy the package a stage ran before its current one, and reject the current one"),
    ):
        command = commands.add_parser(name, parents=[common], help=help_text)
        if name == "promote":
            command.add_argument("--package", required=True, metavar="ARN", help="the model package")
        command.add_argument("--stage", choices=registry.STAGES, required=True)
        command.add_argument(
            "--endpoint-name",
            type=endpoint_name,
            help="default: dogbreeds-STAGE, as .chalice/config.json has",
        )
        add_hosting_options(command)


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


def job_spec(args: argparse.Namespace, settings: AwsSettings) -> JobSpec:
    return JobSpec(
        region=settings.region,
        role=settings.require_role(),
        bucket=settings.require_bucket(),
        prefix=args.prefix,
        data_prefix=args.data_prefix,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        distribution=args.distribution,
        volume_gb=args.volume_gb,
        max_runtime_s=args.max_runtime,
    )


def deploy_spec(args: argparse.Namespace, settings: AwsSettings) -> deploy.EndpointSpec:
    """The endpoint the deploy flags describe. Raises SettingsError/HostingError for flags that do not fit."""
    serverless = None
    if args.serverless_memory is not None or args.max_concurrency is not None:
        if args.serverless_memory is None or args.max_concurrency is None:
            raise SettingsError("a serverless endpoint needs both --serverless-memory and --max-concurrency")
        for flag, value in (("--min-instances", args.min_instances), ("--max-instances", args.max_instances)):
            if value is not None:
                raise SettingsError(f"a serverless endpoint has no instances: drop {flag}")
        serverless = ServerlessSpec(
            args.serverless_memory, args.max_concurrency, args.provisioned_concurrency
        )
    elif args.provisioned_concurrency is not None:
        raise SettingsError("--provisioned-concurrency is for a serverless endpoint (--serverless-memory)")
    async_inference = None
    if args.async_output is not None:
        async_inference = AsyncSpec(args.async_output, args.async_success_topic, args.async_error_topic)
    elif args.async_success_topic or args.async_error_topic:
        raise SettingsError("--async-success-topic and --async-error-topic need --async-output")
    capture = None
    if (args.capture_percent is None) != (args.capture_s3 is None):
        raise SettingsError("data capture needs both --capture-percent and --capture-s3")
    if args.capture_percent is not None:
        capture = CaptureSpec(args.capture_percent, args.capture_s3, args.capture_retention_days)

    default_min = 0 if async_inference is not None else 1
    min_instances = default_min if args.min_instances is None else args.min_instances
    max_instances = DEFAULT_MAX_INSTANCES if args.max_instances is None else args.max_instances
    if min_instances == 0 and async_inference is None:
        raise SettingsError("--min-instances 0 needs an asynchronous endpoint (--async-output)")
    if min_instances > max_instances:
        raise SettingsError(f"--min-instances {min_instances} exceeds --max-instances {max_instances}")
    model_bucket, _ = storage.parse_s3_uri(args.model_data)
    instance_type = args.instance_type
    if serverless is None:
        instance_type = instance_type or DEFAULT_ENDPOINT_INSTANCE
    return deploy.EndpointSpec(
        region=settings.region,
        role=settings.require_role(),
        bucket=settings.bucket or model_bucket,
        prefix=args.prefix,
        model_data=args.model_data,
        instance_type=instance_type,
        scaling=ScalingSpec(
            endpoint_name=args.endpoint_name,
            min_instances=min_instances,
            max_instances=max_instances,
            target_invocations=args.target_invocations,
            scale_in_cooldown_s=args.scale_in_cooldown,
            scale_out_cooldown_s=args.scale_out_cooldown,
            target_backlog=args.target_backlog if async_inference is not None else None,
        ),
        serverless=serverless,
        async_inference=async_inference,
        capture=capture,
        rollout=RolloutSpec(args.canary_percent, args.bake_minutes, args.rollback_latency_ms),
    )


def run_deploy(args: argparse.Namespace, settings: AwsSettings, aws: Aws, log, package=(None, None)) -> dict:
    """`deploy`; `package`: (ARN, version) of the model package it serves, for promote and rollback."""
    spec = replace(deploy_spec(args, settings), model_package=package[0], model_version=package[1])
    if args.async_input and not args.chalice_stage:
        raise SettingsError("--async-input is the stage's setting: it needs --chalice-stage")
    if args.chalice_stage:
        # Before anything is created: a stage calling another endpoint, or lacking the input, is a typo.
        chalice_stage.check_stage(
            args.chalice_dir, args.chalice_stage, spec.endpoint_name, spec.kind, args.async_input
        )
    deployed = deploy.deploy(aws, spec, log)
    if args.chalice_stage:
        resize_size = None
        if not aws.dry_run:
            bucket, key = storage.parse_s3_uri(args.model_data)
            archive = aws.send(AwsCall("s3", "GetObject", {"Bucket": bucket, "Key": key}))["Body"].read()
            resize_size = chalice_stage.model_resize_size(archive)
        deployed["stage"] = chalice_stage.update_stage(
            args.chalice_dir,
            args.chalice_stage,
            endpoint_name=spec.endpoint_name,
            kind=spec.kind,
            resize_size=resize_size,
            places=spec.async_inference
            and chalice_stage.AsyncLocations(
                args.async_input, spec.async_inference.output, spec.async_inference.failure_output
            ),
            dry_run=aws.dry_run,
            log=log,
        )
    return deployed


def run_pipeline(args: argparse.Namespace, settings: AwsSettings, aws: Aws, log) -> dict:
    if args.action == "status":
        return pipeline.status(aws, args.pipeline_name, args.execution)
    if args.action == "start":
        return pipeline.start(aws, args.pipeline_name, args.package_group, args.margin, args.max_ece, log)
    spec = pipeline.PipelineSpec(
        job=job_spec(args, settings),
        name=args.pipeline_name,
        package_group=args.package_group,
        hyperparameters=dict(args.hyperparameters),
        evaluation_instance_type=args.evaluation_instance_type,
    )
    return pipeline.upsert(aws, spec, log)


def run_promotion(args: argparse.Namespace, settings: AwsSettings, aws: Aws, log) -> dict:
    """promote or rollback: the stage's endpoint (and Chalice stage) gets the package, via `deploy`."""
    args.endpoint_name = args.endpoint_name or f"dogbreeds-{args.stage}"
    args.chalice_stage = args.stage
    where = (settings.require_bucket(), registry.record_key(args.prefix, args.stage))
    # Before anything changes in the registry: hosting flags that do not fit, or a stage calling another
    # endpoint, are typos.
    flags = argparse.Namespace(**{**vars(args), "model_data": f"s3://{where[0]}/{where[1]}"})
    kind = deploy_spec(flags, settings).kind
    chalice_stage.check_stage(args.chalice_dir, args.stage, args.endpoint_name, kind, args.async_input)

    def deploy_model(model_data: str, arn: str, version: str) -> dict:
        args.model_data = model_data
        return run_deploy(args, settings, aws, log, package=(arn, version))

    if args.command == "promote":
        return registry.promote(aws, args.package, args.stage, args.endpoint_name, where, deploy_model, log)
    return registry.rollback(aws, args.stage, where, deploy_model, log)


def transform_spec(args: argparse.Namespace, settings: AwsSettings) -> batch_transform.TransformSpec:
    input_uri, output_uri = batch_transform.folder_uri(args.input), batch_transform.folder_uri(args.output)
    # The job reads every object under --input: answers written there would be read by the next job.
    if output_uri.startswith(input_uri) or input_uri.startswith(output_uri):
        raise SettingsError(f"--output {output_uri} must not overlap --input {input_uri}")
    workers = args.workers or batch_transform.instance_vcpus(args.instance_type)
    if workers is None:
        raise SettingsError(f"cannot tell the vCPUs of {args.instance_type}: pass --workers")
    model_bucket, _ = storage.parse_s3_uri(args.model_data)
    return batch_transform.TransformSpec(
        region=settings.region,
        role=settings.require_role(),
        bucket=settings.bucket or model_bucket,
        prefix=args.prefix,
        model_data=args.model_data,
        input_uri=input_uri,
        output_uri=output_uri,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        workers=workers,
        max_payload_mb=args.max_payload_mb,
    )


def run(args: argparse.Namespace, log) -> dict:
    """Carry out one parsed command; returns what it reports."""
    settings = resolve_settings(args.region, args.role, args.bucket)
    # Dry-run requests go to stdout as JSON lines; the progress log goes to stderr so stdout stays parseable.
    aws = Aws(settings.region, dry_run=args.dry_run)
    if args.command == "upload-data":
        bucket = settings.require_bucket()
        uploaded, skipped = storage.upload_image_folder(aws, args.data, bucket, args.prefix, args.workers)
        return {
            "uploaded": uploaded,
            "unchanged": skipped,
            "location": f"s3://{bucket}/{args.prefix.strip('/')}/",
        }
    if args.command == "train":
        spec = job_spec(args, settings)
        return launch.start_training(aws, spec, dict(args.hyperparameters), args.job_name)
    if args.command == "tune":
        spec = job_spec(args, settings)
        space = SearchSpace(
            lr=tuple(args.lr_range),
            batch_size=tuple(args.batch_sizes),
            epochs=tuple(args.epochs_range),
            backbones=tuple(args.backbones),
        )
        static = dict(args.hyperparameters)
        tuned = {"lr", "epochs", "batch-size", "backbone"} & static.keys()
        if tuned:
            raise SettingsError(
                f"tune searches {', '.join(sorted(tuned))}; do not fix them with --hyperparameters"
            )
        return launch.start_tuning(
            aws, spec, space, args.max_jobs, args.max_parallel, static, args.tuning_job_name, wait_s=args.wait
        )
    if args.command == "deploy":
        return run_deploy(args, settings, aws, log)
    if args.command == "pipeline":
        return run_pipeline(args, settings, aws, log)
    if args.command in ("promote", "rollback"):
        return run_promotion(args, settings, aws, log)
    if args.command == "transform":
        return batch_transform.run_transform(
            aws, transform_spec(args, settings), args.job_name, args.results, log
        )
    existed = deploy.teardown(aws, args.endpoint_name, log)
    return {"endpoint": args.endpoint_name, "deleted": existed}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"dry run, would have: {message}" if args.dry_run else message, file=sys.stderr)

    try:
        report = run(args, log)
    except (SettingsError, DistributionError, storage.DataLayoutError, ValueError) as error:
        # (registry.PromotionError and chalice_stage.StageError are ValueErrors)
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except tarfile.ReadError as error:
        print(f"error: --model-data is not a tar.gz archive ({error})", file=sys.stderr)
        return EXIT_USAGE
    except deploy.EndpointStateError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_AWS
    except ClientError as error:
        details = error.response.get("Error", {})
        print(
            f"error: AWS {error.operation_name}: {details.get('Code')}: {details.get('Message')}",
            file=sys.stderr,
        )
        return EXIT_AWS
    except NoCredentialsError:
        print(
            "error: no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run where an instance role provides them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except BotoCoreError as error:
        print(f"error: AWS: {error}", file=sys.stderr)
        return EXIT_AWS
    if not args.dry_run:
        print(json.dumps(report, indent=2, default=str))
    if args.command == "transform" and not args.dry_run:
        # As the local batch command: non-zero when the job failed or any image has no answer.
        failed = report["status"] != "Completed" or report["summary"]["failed"]
        return EXIT_AWS if failed else 0
    return 0
