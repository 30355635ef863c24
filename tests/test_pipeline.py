"""The model registry loop against a real moto_server: `pipeline upsert|start|status`, `promote`, `rollback`.

moto stores the pipeline, its runs, the package group, the packages and their approval, and runs no step:
pipeline_player.PipelinePlayer plays each run with the code the jobs run (the training job's and the
evaluation job's entries from their archives) on a few real photos of three breeds. moto lacks
ListPipelineExecutionSteps and UpdateEndpoint: botocore hooks answer them (pipeline_player.ExecutionAnswers,
moto_server.EndpointUpdates), after botocore has validated the request.
"""

# The fixtures of test_jobs (moto_server, a bucket) are imported, then named as arguments.
# ruff: noqa: F811

from __future__ import annotations

import io
import json
import shutil
import tarfile
import urllib.request
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import validate_parameters
from conftest import EndpointProcess
from moto_server import EndpointUpdates
from pipeline_player import ExecutionAnswers, PipelinePlayer, validate
from test_jobs import (  # noqa: F401 - fixtures
    PROJECT,
    REGION,
    ROLE,
    aws,
    connections,
    isolate_aws_env,
    moto,
    report,
    run_jobs,
    s3_object,
    tar_members,
)

from classifier.identity import MODEL_PACKAGE_ENV, MODEL_VERSION_ENV
from training.jobs import cli, pipeline
from training.jobs.calls import Aws
from training.jobs.source_bundle import repack_model

# Three breeds the ImageNet backbone knows well, a few photos each; test/ is photos valid/ does not hold.
FOLDERS = ("007.Shih-Tzu", "012.Beagle", "044.Labrador_retriever")
SPLITS = {"train": ("train", 0, 6), "valid": ("valid", 0, 3), "test": ("valid", 3, 3)}
HYPERPARAMETERS = (
    "backbone=efficientnet-lite0",
    "epochs=3",
    "batch-size=8",
    "lr=0.003",
    "threads=1",
    "workers=0",
)


def photo_tree(dogs: Path, root: Path, mislabeled: bool = False) -> Path:
    """train/valid/test of FOLDERS; `mislabeled`: each breed's training photos filed under the next breed,
    as a batch of new photos with wrong labels would be."""
    for split, (source_split, start, count) in SPLITS.items():
        for index, folder in enumerate(FOLDERS):
            source_folder = FOLDERS[(index + 1) % len(FOLDERS)] if mislabeled and split == "train" else folder
            source = next((dogs / source_split).glob(f"*.{source_folder.split('.', 1)[1]}"))
            (root / split / folder).mkdir(parents=True)
            for image in sorted(source.glob("*.jpg"))[start : start + count]:
                shutil.copy(image, root / split / folder / image.name)
    return root


def hook_cli(monkeypatch, player: PipelinePlayer | None = None) -> list[EndpointUpdates]:
    """The CLI's AWS clients with moto's missing calls answered; returns the UpdateEndpoint recorders."""
    updates: list[EndpointUpdates] = []

    def hooked(region: str, dry_run: bool = False, out=None) -> Aws:
        aws = Aws(region, dry_run=dry_run, out=out)
        if not dry_run:
            updates.append(EndpointUpdates(aws.client("sagemaker"), persist=True))
            if player is not None:
                ExecutionAnswers(aws.client("sagemaker"), player)
        return aws

    monkeypatch.setattr(cli, "Aws", hooked)
    return updates


def placeholders(definition: dict) -> dict:
    """A context naming every Get of the definition with a value of the right type, for validation."""
    context = {
        "Execution.PipelineExecutionId": "abc123",
        "Steps.Train.ModelArtifacts.S3ModelArtifacts": "s3://b/m",
    }
    for parameter in definition["Parameters"]:
        context[f"Parameters.{parameter['Name']}"] = parameter["DefaultValue"]
    return context


def test_the_definition_is_valid_requests_and_is_stored(aws, capsys, monkeypatch, tmp_path):
    created = report(run_jobs(capsys, "pipeline", "upsert", "--hyperparameters", *HYPERPARAMETERS))

    stored = aws.sagemaker.describe_pipeline(PipelineName="dogbreeds")
    definition = json.loads(stored["PipelineDefinition"])
    assert (created["pipeline"], stored["RoleArn"]) == ("dogbreeds", ROLE)
    assert [step["Name"] for step in definition["Steps"]] == ["Train", "Evaluate", "QualityGate"]
    train, evaluate, gate = definition["Steps"]
    # Each step's arguments, once SageMaker has filled in the run's values, are the API's requests.
    player = PipelinePlayer(REGION, tmp_path)
    context = placeholders(definition)
    validate("CreateTrainingJob", {**player.resolve(train["Arguments"], context), "TrainingJobName": "t"})
    processing = {**player.resolve(evaluate["Arguments"], context), "ProcessingJobName": "e"}
    validate("CreateProcessingJob", processing)
    (register,) = gate["Arguments"]["IfSteps"]
    (fail,) = gate["Arguments"]["ElseSteps"]
    register_args = player.resolve(register["Arguments"], context)
    validate("CreateModelPackage", register_args)
    assert (register["Type"], fail["Type"]) == ("RegisterModel", "Fail")
    assert train["Arguments"]["HyperParameters"]["backbone"] == "efficientnet-lite0"
    # The evaluation reads test/, which neither the training channels nor the tuner see.
    inputs = {item["InputName"]: item["S3Input"]["S3Uri"] for item in processing["ProcessingInputs"]}
    assert inputs["test"] == f"s3://{aws.bucket}/dogbreeds/data/test/"
    assert inputs["model"] == "s3://b/m"
    channels = [
        channel["DataSource"]["S3DataSource"]["S3Uri"] for channel in train["Arguments"]["InputDataConfig"]
    ]
    assert not any(uri.endswith("/test/") for uri in channels)
    assert register_args["ModelApprovalStatus"] == "PendingManualApproval"
    assert register_args["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == (
        f"s3://{aws.bucket}/dogbreeds/pipelines/dogbreeds/abc123/evaluation/evaluation.json"
    )
    conditions = {c["Type"]: c for c in gate["Arguments"]["Conditions"]}
    assert conditions["GreaterThanOrEqualTo"]["RightValue"] == {"Get": "Parameters.MinTop1"}
    assert conditions["LessThanOrEqualTo"]["RightValue"] == {"Get": "Parameters.MaxEce"}
    assert {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]} == {
        "MinTop1": 0.0,
        "MaxEce": 0.03,
    }
    assert aws.sagemaker.describe_model_package_group(ModelPackageGroupName="dogbreeds")

    # Upserting again updates the one pipeline.
    report(run_jobs(capsys, "pipeline", "upsert", "--hyperparameters", "epochs=9"))
    updated = json.loads(aws.sagemaker.describe_pipeline(PipelineName="dogbreeds")["PipelineDefinition"])
    assert updated["Steps"][0]["Arguments"]["HyperParameters"]["epochs"] == "9"
    assert [p["PipelineName"] for p in aws.sagemaker.list_pipelines()["PipelineSummaries"]] == ["dogbreeds"]


def test_dry_runs_print_every_request_and_connect_nowhere(monkeypatch, tmp_path, capsys, connections):
    isolate_aws_env(monkeypatch, tmp_path)
    common = ("--region", REGION, "--role", ROLE, "--bucket", "nowhere", "--dry-run")
    package = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/dogbreeds/3"
    chalice = ("--chalice-dir", str(PROJECT / ".chalice"))
    commands = {
        "upsert": ("pipeline", "upsert"),
        "start": ("pipeline", "start"),
        "status": ("pipeline", "status"),
        "promote": ("promote", "--package", package, "--stage", "prod", *chalice),
        "rollback": ("rollback", "--stage", "prod", *chalice),
    }
    session = botocore.session.get_session()
    printed = {}
    for name, argv in commands.items():
        result = run_jobs(capsys, *argv, *common)
        assert result.code == 0, result.err
        printed[name] = [json.loads(line) for line in result.out.splitlines()]
        for request in printed[name]:
            if request["service"] != "s3":
                model = session.get_service_model(request["service"]).operation_model(request["operation"])
                validate_parameters(request["params"], model.input_shape)

    def operations(name: str) -> list[str]:
        return [request["operation"] for request in printed[name]]

    assert operations("upsert") == [
        "PutObject",
        "PutObject",
        "DescribeModelPackageGroup",
        "CreateModelPackageGroup",
        "DescribePipeline",
        "CreatePipeline",
    ]
    assert operations("start") == ["ListModelPackages", "StartPipelineExecution"]
    assert operations("status") == [
        "ListPipelineExecutions",
        "DescribePipelineExecution",
        "ListPipelineExecutionSteps",
    ]
    promote = operations("promote")
    assert promote[:2] == ["DescribeModelPackage", "UpdateModelPackage"]
    assert {"CreateModel", "CreateEndpointConfig", "CreateEndpoint"} <= set(promote)
    assert promote[-2:] == ["GetObject", "PutObject"]  # the stage's record
    rollback = operations("rollback")
    assert rollback[:2] == ["GetObject", "DescribeModelPackage"]
    assert {"CreateModel", "CreateEndpointConfig"} <= set(rollback)
    assert rollback[-2:] == ["UpdateModelPackage", "PutObject"]  # the replaced package rejected, the record
    assert connections == []
