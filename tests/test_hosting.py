"""`deploy`'s hosting options against a real moto_server: serverless, asynchronous, data capture, blue/green
updates with rollback alarms, and what `deploy --chalice-stage` writes for the API's stage.

moto lacks UpdateEndpoint: moto_server.EndpointUpdates answers it (after botocore has validated the request).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import validate_parameters
from conftest import PROJECT
from jobs_on_moto import (
    INFERENCE_IMAGE_CPU,
    REGION,
    ROLE,
    isolate_aws_env,
    report,
    run_jobs,
    scaling_state,
    uploaded_model,
)
from moto_server import EndpointUpdates

from chalicelib.settings import ASYNC_TICKETS_FOLDER
from training.jobs import deploy
from training.jobs.autoscaling import ScalingSpec
from training.jobs.calls import Aws
from training.jobs.chalice_stage import (
    ASYNC_ENVS,
    MANAGED_SIDS,
    TICKETS_FOLDER,
    AsyncLocations,
    policy_statements,
)
from training.jobs.hosting import RolloutSpec

# Every test here is guarded against connecting anywhere but loopback.
pytestmark = pytest.mark.usefixtures("connections")

SNS = "arn:aws:sns:eu-west-1:123456789012:dogbreeds-results"
SNS_ERRORS = "arn:aws:sns:eu-west-1:123456789012:dogbreeds-failures"


def alarms_of(moto_aws, name: str) -> dict[str, dict]:
    import boto3

    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    return {
        alarm["AlarmName"]: alarm
        for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=name)["MetricAlarms"]
    }


def test_serverless_endpoint_has_memory_and_concurrency_and_no_instances(aws, trained_model, capsys):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    deployed = report(
        run_jobs(
            capsys,
            "deploy",
            "--model-data",
            trained_model,
            "--endpoint-name",
            name,
            "--serverless-memory",
            "3072",
            "--max-concurrency",
            "8",
            "--provisioned-concurrency",
            "2",
        )
    )

    assert deployed["kind"] == "serverless"
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config"])
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {
        "MemorySizeInMB": 3072,
        "MaxConcurrency": 8,
        "ProvisionedConcurrency": 2,
    }
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    model = aws.sagemaker.describe_model(ModelName=deployed["model"])
    assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE_CPU
    # SageMaker scales a serverless endpoint itself: no scalable target, no policy.
    assert scaling_state(aws, name) == ([], [])
    assert report(run_jobs(capsys, "teardown", "--endpoint-name", name))["deleted"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--serverless-memory", "1500", "--max-concurrency", "2"), "must be one of 1024, 2048"),
        (("--serverless-memory", "7168", "--max-concurrency", "2"), "must be one of"),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "0"),
            "--max-concurrency must be from 1 to 200",
        ),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "201"),
            "--max-concurrency must be from 1 to 200",
        ),
        (("--serverless-memory", "2048"), "needs both --serverless-memory and --max-concurrency"),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--provisioned-concurrency", "3"),
            "--provisioned-concurrency must be from 1 to --max-concurrency (2), got 3",
        ),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--provisioned-concurrency", "0"),
            "--provisioned-concurrency must be from 1",
        ),
        (("--provisioned-concurrency", "2"), "is for a serverless endpoint"),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--instance-type", "ml.g5.xlarge"),
            "runs on CPU only: --instance-type ml.g5.xlarge is a GPU instance",
        ),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--instance-type", "ml.m5.large"),
            "has no instances: drop --instance-type",
        ),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--min-instances", "1"),
            "drop --min-instances",
        ),
        (
            ("--serverless-memory", "2048", "--max-concurrency", "2", "--async-output", "s3://b/out"),
            "serverless or asynchronous, not both",
        ),
        (
            (
                "--serverless-memory",
                "2048",
                "--max-concurrency",
                "2",
                "--capture-percent",
                "5",
                "--capture-s3",
                "s3://b/c",
            ),
            "does not capture data",
        ),
        (("--async-output", "out/"), "expected s3://BUCKET/KEY"),
        (("--async-output", "s3://b/out", "--async-success-topic", "results"), "must be an SNS topic ARN"),
        (("--async-success-topic", SNS), "need --async-output"),
        (("--min-instances", "0"), "--min-instances 0 needs an asynchronous endpoint"),
        (("--capture-percent", "0", "--capture-s3", "s3://b/c"), "--capture-percent must be from 1 to 100"),
        (("--capture-percent", "10"), "needs both --capture-percent and --capture-s3"),
        (("--canary-percent", "60"), "--canary-percent must be from 1 to 50"),
        (("--bake-minutes", "61"), "--bake-minutes must be from 0 to 60"),
    ],
)
def test_hosting_options_out_of_bounds_are_one_line_errors(
    argv, message, monkeypatch, tmp_path, capsys, connections
):
    isolate_aws_env(monkeypatch, tmp_path)
    common = ("--region", REGION, "--role", ROLE, "--bucket", "nowhere", "--dry-run")
    result = run_jobs(
        capsys, "deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint-name", "d", *argv, *common
    )
    assert result.code == 2, result.err
    assert message in result.err and result.err.startswith("error: ") and result.err.count("\n") == 1
    assert result.out == "" and connections == []


def test_async_endpoint_queues_to_s3_and_scales_to_zero(aws, trained_model, capsys):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    output = f"s3://{aws.bucket}/dogbreeds/async/{name}/results"
    argv = ("--model-data", trained_model, "--endpoint-name", name, "--instance-type", "ml.g4dn.xlarge")
    queued = ("--async-output", output, "--async-success-topic", SNS, "--async-error-topic", SNS_ERRORS)
    deployed = report(
        run_jobs(capsys, "deploy", *argv, *queued, "--max-instances", "3", "--target-backlog", "4")
    )

    assert deployed["kind"] == "async"
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config"])
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {
            "S3OutputPath": output,
            "S3FailurePath": f"{output}-failures",
            "NotificationConfig": {"SuccessTopic": SNS, "ErrorTopic": SNS_ERRORS},
        }
    }
    (variant,) = config["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 1)

    (target,), policies = scaling_state(aws, name)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    by_type = {policy["PolicyType"]: policy for policy in policies}
    tracking = by_type["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 4.0
    assert tracking["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance",
        "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "EndpointName", "Value": name}],
        "Statistic": "Average",
    }
    # From zero instances there is no backlog per instance: an alarm on the backlog starts the first one.
    step = by_type["StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}
    ]
    alarm = alarms_of(aws, name)[f"{name}-backlog-without-capacity"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [step["PolicyARN"]]

    report(run_jobs(capsys, "teardown", "--endpoint-name", name))
    assert scaling_state(aws, name) == ([], []) and alarms_of(aws, name) == {}


def capture_rules(aws) -> list[dict]:
    return aws.s3.get_bucket_lifecycle_configuration(Bucket=aws.bucket)["Rules"]


def test_captured_data_expires_and_the_buckets_other_rules_are_kept(aws, trained_model, capsys):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    destination = f"s3://{aws.bucket}/dogbreeds/capture/{name}"
    theirs = {"ID": "keep-logs-a-year", "Filter": {"Prefix": "logs/"}, "Status": "Enabled"}
    theirs["Expiration"] = {"Days": 365}
    aws.s3.put_bucket_lifecycle_configuration(Bucket=aws.bucket, LifecycleConfiguration={"Rules": [theirs]})
    deploy_argv = ("deploy", "--model-data", trained_model, "--endpoint-name", name)
    capture_argv = ("--capture-percent", "20", "--capture-s3", destination)

    first = report(run_jobs(capsys, *deploy_argv, *capture_argv))
    rules = {rule["ID"]: rule for rule in capture_rules(aws)}
    assert rules["keep-logs-a-year"]["Expiration"] == {"Days": 365}
    (ours,) = [rule for rule in rules.values() if rule["ID"] != "keep-logs-a-year"]
    assert ours["Filter"] == {"Prefix": f"dogbreeds/capture/{name}/"} and ours["Status"] == "Enabled"
    assert ours["Expiration"] == {"Days": 30}  # the default

    # Another retention replaces the rule (one per prefix) and leaves the endpoint's config as it was.
    second = report(run_jobs(capsys, *deploy_argv, *capture_argv, "--capture-retention-days", "7"))
    rules = {rule["ID"]: rule for rule in capture_rules(aws)}
    assert len(rules) == 2 and rules[ours["ID"]]["Expiration"] == {"Days": 7}
    assert rules["keep-logs-a-year"]["Expiration"] == {"Days": 365}
    assert second["endpoint_config"] == first["endpoint_config"]

    with pytest.raises(SystemExit) as refused:
        run_jobs(capsys, *deploy_argv, *capture_argv, "--capture-retention-days", "0")
    assert refused.value.code == 2 and "--capture-retention-days" in capsys.readouterr().err


def test_data_capture_and_the_rollback_alarms_are_created(aws, trained_model, capsys):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    destination = f"s3://{aws.bucket}/dogbreeds/capture/{name}"
    deployed = report(
        run_jobs(
            capsys,
            "deploy",
            "--model-data",
            trained_model,
            "--endpoint-name",
            name,
            "--capture-percent",
            "20",
            "--capture-s3",
            destination,
            "--rollback-latency-ms",
            "1500",
        )
    )

    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config"])
    capture = config["DataCaptureConfig"]
    assert (capture["EnableCapture"], capture["InitialSamplingPercentage"]) == (True, 20)
    assert capture["DestinationS3Uri"] == destination
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]

    alarms = alarms_of(aws, name)
    assert sorted(deployed["rollback_alarms"]) == sorted(alarms)
    metrics = {alarm["MetricName"]: alarm for alarm in alarms.values()}
    assert set(metrics) == {"Invocation5XXErrors", "InvocationModelErrors", "ModelLatency"}
    for alarm in alarms.values():
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
            "EndpointName": name,
            "VariantName": "AllTraffic",
        }
    # Any 5xx at all: more than none.
    assert (
        metrics["Invocation5XXErrors"]["ComparisonOperator"],
        metrics["Invocation5XXErrors"]["Threshold"],
    ) == (
        "GreaterThanThreshold",
        0.0,
    )
    assert metrics["ModelLatency"]["ExtendedStatistic"] == "p99"
    assert metrics["ModelLatency"]["Threshold"] == 1_500_000.0  # microseconds

    # A real-time endpoint without options keeps the config name it had before the options existed.
    plain = report(
        run_jobs(capsys, "deploy", "--model-data", trained_model, "--endpoint-name", f"{name}-plain")
    )
    assert plain["endpoint_config"] == deploy.versioned_name(
        f"{name}-plain", plain["model"], "ml.m5.large", 1
    )
    for torn in (name, f"{name}-plain"):
        report(run_jobs(capsys, "teardown", "--endpoint-name", torn))
    assert alarms_of(aws, name) == {}


def endpoint_spec(aws, trained_model, name: str) -> deploy.EndpointSpec:
    return deploy.EndpointSpec(
        region=REGION,
        role=ROLE,
        bucket=aws.bucket,
        prefix="dogbreeds",
        model_data=trained_model,
        instance_type="ml.m5.large",
        scaling=ScalingSpec(endpoint_name=name, min_instances=2, max_instances=4, target_invocations=80),
    )


def recorded_operations(client) -> list[str]:
    operations: list[str] = []
    client.meta.events.register("before-call.sagemaker", lambda model, **_: operations.append(model.name))
    return operations


def test_a_new_model_goes_blue_green_with_a_canary(aws, trained_model):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    spec = endpoint_spec(aws, trained_model, name)
    first = deploy.deploy(Aws(REGION), spec, print)
    again = Aws(REGION)
    operations = recorded_operations(again.client("sagemaker"))
    updates = EndpointUpdates(again.client("sagemaker"))
    canary = replace(
        spec, instance_type="ml.c5.xlarge", rollout=RolloutSpec(canary_percent=10, bake_minutes=5)
    )
    second = deploy.deploy(again, canary, print)

    (update,) = updates.requests
    assert update == {
        "EndpointName": name,
        "EndpointConfigName": second["endpoint_config"],
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "CANARY",
                    "WaitIntervalInSeconds": 300,
                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                },
                "TerminationWaitInSeconds": 300,
            },
            "AutoRollbackConfiguration": {
                "Alarms": [{"AlarmName": alarm} for alarm in first["rollback_alarms"]]
            },
        },
    }
    assert set(first["rollback_alarms"]) == set(alarms_of(aws, name))
    # The endpoint is moved, never deleted and made again.
    assert "DescribeEndpoint" in operations
    assert "DeleteEndpoint" not in operations and "CreateEndpoint" not in operations
    deploy.teardown(Aws(REGION), name, print)


def test_an_update_rolled_back_leaves_the_old_model_serving_and_scaled(aws, trained_model):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    spec = endpoint_spec(aws, trained_model, name)
    first = deploy.deploy(Aws(REGION), spec, print)
    before = scaling_state(aws, name)
    again = Aws(REGION)
    EndpointUpdates(again.client("sagemaker"), roll_back=True)

    with pytest.raises(
        deploy.EndpointStateError, match=f"rolled back .*{first['endpoint_config']} still serves"
    ):
        deploy.deploy(again, replace(spec, instance_type="ml.c5.xlarge"), print)

    # The old config and model are kept (they serve); the scaling taken off for the update is back as it was.
    configs = {
        c["EndpointConfigName"]
        for c in aws.sagemaker.list_endpoint_configs(NameContains=name)["EndpointConfigs"]
    }
    assert first["endpoint_config"] in configs
    assert aws.sagemaker.describe_model(ModelName=first["model"])
    (target,), (policy,) = scaling_state(aws, name)
    (old_target,), (old_policy,) = before
    assert (target["MinCapacity"], target["MaxCapacity"]) == (
        old_target["MinCapacity"],
        old_target["MaxCapacity"],
    )
    assert (
        policy["TargetTrackingScalingPolicyConfiguration"]
        == old_policy["TargetTrackingScalingPolicyConfiguration"]
    )
    deploy.teardown(Aws(REGION), name, print)


def test_dry_run_requests_are_valid_api_requests(monkeypatch, tmp_path, capsys, connections):
    """What --dry-run prints for each option is a request botocore accepts (the API's own spelling)."""
    isolate_aws_env(monkeypatch, tmp_path)
    common = ("--region", REGION, "--role", ROLE, "--bucket", "nowhere", "--dry-run")
    deploy = ("deploy", "--model-data", "s3://nowhere/model.tar.gz", "--endpoint-name", "dogs")
    variants = {
        "serverless": (
            "--serverless-memory",
            "1024",
            "--max-concurrency",
            "4",
            "--provisioned-concurrency",
            "1",
        ),
        "async": (
            "--async-output",
            "s3://nowhere/results",
            "--async-success-topic",
            SNS,
            "--capture-percent",
            "50",
            "--capture-s3",
            "s3://nowhere/capture",
            "--canary-percent",
            "20",
        ),
    }
    session = botocore.session.get_session()
    for kind, argv in variants.items():
        result = run_jobs(capsys, *deploy, *argv, *common)
        assert result.code == 0, result.err
        requests = [json.loads(line) for line in result.out.splitlines()]
        for request in requests:
            if request["operation"] == "PutObject":
                continue
            model = session.get_service_model(request["service"]).operation_model(request["operation"])
            validate_parameters(request["params"], model.input_shape)
        (config,) = [r["params"] for r in requests if r["operation"] == "CreateEndpointConfig"]
        if kind == "serverless":
            assert config["ProductionVariants"][0]["ServerlessConfig"] == {
                "MemorySizeInMB": 1024,
                "MaxConcurrency": 4,
                "ProvisionedConcurrency": 1,
            }
            assert not [
                r for r in requests if r["service"] == "application-autoscaling" and "Put" in r["operation"]
            ]
        else:
            assert config["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == "s3://nowhere/results"
            assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 50
            operations = [r["operation"] for r in requests]
            assert operations.count("PutMetricAlarm") == 4  # three for rollback, one to scale out from zero
    assert connections == []


def test_a_dry_run_names_what_it_would_write_into_the_stage_and_writes_nothing(monkeypatch, tmp_path, capsys):
    isolate_aws_env(monkeypatch, tmp_path)
    chalice_dir = stage_copy(tmp_path, "dogbreeds-dev")
    before = {path.name: path.read_bytes() for path in chalice_dir.iterdir()}
    common = ("--region", REGION, "--role", ROLE, "--bucket", "nowhere", "--dry-run")
    argv = ("--model-data", "s3://nowhere/model.tar.gz", "--endpoint-name", "dogbreeds-dev")
    result = run_jobs(
        capsys, "deploy", *argv, "--chalice-stage", "dev", "--chalice-dir", str(chalice_dir), *common
    )
    assert result.code == 0, result.err
    written = "write MODEL_RESIZE_SIZE=<resize_size of the model's config.json>, ENDPOINT_KIND=real-time"
    assert f"would have: {written}" in result.err
    assert {path.name: path.read_bytes() for path in chalice_dir.iterdir()} == before


# --- the API's stage: deploy writes what the Lambda needs to know about the endpoint ---


def stage_copy(tmp_path: Path, endpoint_name: str) -> Path:
    chalice_dir = tmp_path / ".chalice"
    shutil.copytree(PROJECT / ".chalice", chalice_dir)
    config = json.loads((chalice_dir / "config.json").read_text())
    config["stages"]["dev"]["environment_variables"]["ENDPOINT_NAME"] = endpoint_name
    (chalice_dir / "config.json").write_text(json.dumps(config, indent=2))
    return chalice_dir


@pytest.fixture
def fast_model(aws) -> str:
    """The committed fast model (another resize size than the default's) as a training job's archive."""
    return uploaded_model(aws, PROJECT / "models" / "fast", "dogbreeds-train-fast")


def stage_of(chalice_dir: Path, stage: str = "dev") -> tuple[dict, list[dict]]:
    config = json.loads((chalice_dir / "config.json").read_text())["stages"][stage]
    policy = json.loads((chalice_dir / config["iam_policy_file"]).read_text())
    return config["environment_variables"], policy["Statement"]


def test_deploy_writes_the_models_resize_size_and_kind_into_the_stage(aws, fast_model, capsys, tmp_path):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    chalice_dir = stage_copy(tmp_path, name)
    model_resize = json.loads((PROJECT / "models" / "fast" / "config.json").read_text())["preprocessing"]
    argv = ("deploy", "--model-data", fast_model, "--endpoint-name", name, "--chalice-dir", str(chalice_dir))
    queued = f"s3://{aws.bucket}/dogbreeds/async/{name}/queued"
    deployed = report(
        run_jobs(
            capsys,
            *argv,
            "--chalice-stage",
            "dev",
            "--async-output",
            f"s3://{aws.bucket}/out",
            "--async-input",
            queued,
        )
    )

    environment, statements = stage_of(chalice_dir)
    assert environment["MODEL_RESIZE_SIZE"] == str(model_resize["resize_size"]) == "224"
    assert (environment["ENDPOINT_KIND"], environment["ASYNC_INPUT_S3"]) == ("async", queued)
    # Where SageMaker writes answers and failures: the endpoint config's, which GET /predict/results reads.
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config"])
    output_config = config["AsyncInferenceConfig"]["OutputConfig"]
    assert environment["ASYNC_OUTPUT_S3"] == output_config["S3OutputPath"] == f"s3://{aws.bucket}/out"
    assert environment["ASYNC_FAILURE_S3"] == output_config["S3FailurePath"]
    assert deployed["stage"]["MODEL_RESIZE_SIZE"] == "224"
    # Least privilege: put photos under the input prefix and tickets beside the answers, queue them on this
    # endpoint, read and list only answers and failures; no synchronous invoke.
    grants = {s["Action"]: s for s in statements if isinstance(s["Action"], str)}
    assert grants["s3:PutObject"]["Resource"] == [
        f"arn:aws:s3:::{aws.bucket}/dogbreeds/async/{name}/queued/*",
        f"arn:aws:s3:::{aws.bucket}/out/requests/*",
    ]
    assert grants["sagemaker:InvokeEndpointAsync"]["Resource"] == f"arn:aws:sagemaker:*:*:endpoint/{name}"
    assert grants["s3:GetObject"]["Resource"] == [
        f"arn:aws:s3:::{aws.bucket}/out/*",
        f"arn:aws:s3:::{aws.bucket}/out-failures/*",
    ]
    assert grants["s3:ListBucket"]["Resource"] == [f"arn:aws:s3:::{aws.bucket}"]
    assert grants["s3:ListBucket"]["Condition"] == {"StringLike": {"s3:prefix": ["out/*", "out-failures/*"]}}
    assert "sagemaker:InvokeEndpoint" not in grants
    assert any(s.get("Sid") == "WriteOwnLogs" for s in statements)

    other = stage_copy(tmp_path / "other", name)
    refused = run_jobs(
        capsys,
        "deploy",
        "--model-data",
        fast_model,
        "--endpoint-name",
        name,
        "--chalice-dir",
        str(other),
        "--chalice-stage",
        "prod",
    )
    assert refused.code == 2 and "stage 'prod' calls endpoint 'dogbreeds-prod'" in refused.err
    report(run_jobs(capsys, "teardown", "--endpoint-name", name))


def test_committed_stages_agree_with_the_model_they_serve():
    """Every stage serves models/default (dev, prod: README's deploy; local: `make run`'s default; another
    model gets its own copy of the local stage, see test_local_stage), and grants what its kind needs."""
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    model = json.loads((PROJECT / "models" / "default" / "config.json").read_text())
    places = AsyncLocations("s3://b/in", "s3://b/out", "s3://b/out-failures")
    managed = {statement["Sid"] for statement in policy_statements("x", "async", places)} | {
        statement["Sid"] for statement in policy_statements("x", "real-time", None)
    }
    assert managed == set(MANAGED_SIDS)
    assert ASYNC_TICKETS_FOLDER == TICKETS_FOLDER  # the Lambda's copy
    for name, stage in config["stages"].items():
        environment = stage["environment_variables"]
        assert environment["MODEL_RESIZE_SIZE"] == str(model["preprocessing"]["resize_size"]), name
        if "iam_policy_file" in stage:
            kind = environment.get("ENDPOINT_KIND", "real-time")
            policy = json.loads((PROJECT / ".chalice" / stage["iam_policy_file"]).read_text())
            stage_places = None
            if kind == "async":
                stage_places = AsyncLocations(*(environment[name] for name in ASYNC_ENVS))
            expected = policy_statements(environment["ENDPOINT_NAME"], kind, stage_places)
            assert [s for s in policy["Statement"] if s.get("Sid") in managed] == expected, name
