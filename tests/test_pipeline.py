"""The model registry loop against a real moto_server: `pipeline upsert|start|status`, `promote`, `rollback`.

moto stores the pipeline, its runs, the package group, the packages and their approval, and runs no step:
pipeline_player.PipelinePlayer plays each run with the code the jobs run (the training job's and the
evaluation job's entries from their archives) on a few real photos of three breeds. moto lacks
ListPipelineExecutionSteps and UpdateEndpoint: botocore hooks answer them (pipeline_player.ExecutionAnswers,
moto_server.EndpointUpdates), after botocore has validated the request.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import botocore.session
import pytest
from botocore.validate import validate_parameters
from conftest import PROJECT, EndpointProcess
from jobs_on_moto import REGION, ROLE, isolate_aws_env, report, run_jobs, s3_object
from moto_server import EndpointUpdates
from pipeline_player import ExecutionAnswers, PipelinePlayer, validate

from serving.contract import MODEL_PACKAGE_ENV, MODEL_VERSION_ENV
from serving.identity import model_identity
from training.jobs import cli
from training.jobs.calls import Aws
from training.jobs.source_bundle import repack_model

# Every test here is guarded against connecting anywhere but loopback.
pytestmark = pytest.mark.usefixtures("connections")

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


@pytest.fixture
def photos(dogs, tmp_path) -> tuple[Path, Path]:
    """(the photos, the same photos with their training labels wrong)."""
    return photo_tree(dogs, tmp_path / "photos"), photo_tree(dogs, tmp_path / "mislabeled", mislabeled=True)


def play_run(capsys, player: PipelinePlayer, *start: str) -> dict:
    """`pipeline start`, the run played, then `pipeline status`."""
    started = report(run_jobs(capsys, "pipeline", "start", *start))
    player.play(started["execution"])
    # (moto lists a pipeline's runs oldest first whatever the sort asked: name the run.)
    status = report(run_jobs(capsys, "pipeline", "status", "--execution", started["execution"]))
    return {**started, "status": status}


def package(aws, arn: str) -> dict:
    return aws.sagemaker.describe_model_package(ModelPackageName=arn)


def endpoint_environment(aws, name: str) -> dict:
    config = aws.sagemaker.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    model = aws.sagemaker.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    return aws.sagemaker.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]


@dataclass
class Loop:
    """The scenario's shared pieces: AWS, the played runs, the CLI's UpdateEndpoint recorders, the stages."""

    aws: SimpleNamespace
    capsys: pytest.CaptureFixture
    player: PipelinePlayer
    updates: list[EndpointUpdates]
    chalice_dir: Path


def registered_first(loop: Loop) -> tuple[str, dict]:
    """No approved package yet: only the ECE limit holds; the model is registered, pending approval."""
    report(run_jobs(loop.capsys, "pipeline", "upsert", "--hyperparameters", *HYPERPARAMETERS))
    first = play_run(loop.capsys, loop.player)
    assert first["gate"] == {"min_top1": 0.0, "max_ece": 0.03, "baseline": None}
    assert first["status"]["status"] == "Succeeded"
    steps = {step["step"]: step for step in first["status"]["steps"]}
    assert [step["step"] for step in first["status"]["steps"]] == [
        "Train",
        "Evaluate",
        "QualityGate",
        "Register",
    ]
    assert steps["QualityGate"]["gate_passed"] is True
    v1 = steps["Register"]["model_package"]
    registered = package(loop.aws, v1)
    assert (registered["ModelApprovalStatus"], registered["ModelPackageVersion"]) == (
        "PendingManualApproval",
        1,
    )
    evaluation = json.loads(
        s3_object(loop.aws, registered["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"])
    )
    figures = evaluation["metrics"]
    assert figures["images"] == 9 and figures["top1"] >= 2 / 3  # three breeds the backbone knows well
    assert set(figures) >= {"top5", "ece", "confident_share", "confident_precision", "false_dog_share"}
    assert evaluation["evaluation"]["data"].endswith("test")
    # The registered archive is the training job's model repacked exactly as `deploy` repacks it.
    container = registered["InferenceSpecification"]["Containers"][0]
    inputs = loop.player.runs[first["execution"]].jobs["Evaluate"]["ProcessingInputs"]
    (trained,) = [s3_object(loop.aws, i["S3Input"]["S3Uri"]) for i in inputs if i["InputName"] == "model"]
    assert s3_object(loop.aws, container["ModelDataUrl"]) == repack_model(trained)
    return v1, figures


def promoted_to_dev_and_prod(loop: Loop, v1: str) -> None:
    """Promoted: approved, deployed on each stage's endpoint, the stage's settings written and recorded."""
    for stage in ("dev", "prod"):
        promoted = report(
            run_jobs(
                loop.capsys,
                "promote",
                "--package",
                v1,
                "--stage",
                stage,
                "--chalice-dir",
                str(loop.chalice_dir),
            )
        )
        assert promoted["endpoint"] == f"dogbreeds-{stage}" and promoted["version"] == 1
    assert package(loop.aws, v1)["ModelApprovalStatus"] == "Approved"
    assert endpoint_environment(loop.aws, "dogbreeds-prod")["Environment"][MODEL_PACKAGE_ENV] == v1
    stages = json.loads((loop.chalice_dir / "config.json").read_text())["stages"]
    assert stages["prod"]["environment_variables"]["MODEL_RESIZE_SIZE"] == "224"  # efficientnet-lite0's
    record = json.loads(s3_object(loop.aws, f"s3://{loop.aws.bucket}/dogbreeds/stages/prod.json"))
    assert (record["package"], record["deployed"]) == (v1, [v1])


def stopped_at_the_gate(loop: Loop, v1: str, figures: dict) -> None:
    """New photos with wrong labels: the model scores far below the approved one and the run stops."""
    report(
        run_jobs(
            loop.capsys,
            "pipeline",
            "upsert",
            "--data-prefix",
            "dogbreeds/new-photos",
            "--hyperparameters",
            *HYPERPARAMETERS,
        )
    )
    worse = play_run(loop.capsys, loop.player, "--margin", "0.02")
    assert worse["gate"]["baseline"]["package"] == v1
    assert worse["gate"]["min_top1"] == pytest.approx(figures["top1"] - 0.02)
    assert worse["status"]["status"] == "Failed"
    assert [step["step"] for step in worse["status"]["steps"]] == [
        "Train",
        "Evaluate",
        "QualityGate",
        "GateFailed",
    ]
    reason = worse["status"]["failure_reason"]
    assert (
        reason.startswith("quality gate failed: top-1 ")
        and f"must be at least {figures['top1'] - 0.02}" in reason
    )
    assert worse["status"]["steps"][-1]["failure_reason"] == reason
    listed = loop.aws.sagemaker.list_model_packages(ModelPackageGroupName="dogbreeds")[
        "ModelPackageSummaryList"
    ]
    assert [item["ModelPackageArn"] for item in listed] == [v1]


def promoted_and_served(loop: Loop, monkeypatch, labrador: bytes, workdir: Path) -> str:
    """A good model again: registered as version 2, promoted to prod with a canary, serving its version."""
    report(run_jobs(loop.capsys, "pipeline", "upsert", "--hyperparameters", *HYPERPARAMETERS, "epochs=4"))
    second = play_run(loop.capsys, loop.player)
    v2 = second["status"]["steps"][-1]["model_package"]
    assert package(loop.aws, v2)["ModelPackageVersion"] == 2
    argv = (
        "promote",
        "--package",
        v2,
        "--stage",
        "prod",
        "--chalice-dir",
        str(loop.chalice_dir),
        "--canary-percent",
        "10",
    )
    promoted = report(run_jobs(loop.capsys, *argv))
    (update,) = [request for recorder in loop.updates for request in recorder.requests]
    assert update["EndpointConfigName"] == promoted["endpoint_config"]
    routing = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 10}
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    served = endpoint_environment(loop.aws, "dogbreeds-prod")
    assert (served["Environment"][MODEL_VERSION_ENV], served["Environment"][MODEL_PACKAGE_ENV]) == ("2", v2)
    pinged, answer = served_answers(loop, served, monkeypatch, labrador, workdir)
    assert pinged["model"] == answer["model"] == {"name": "dogbreeds", "version": "2", "package": v2}
    assert answer["predictions"][0]["label"] == "Labrador_retriever"
    return v2


def served_answers(
    loop: Loop, served: dict, monkeypatch, labrador: bytes, workdir: Path
) -> tuple[dict, dict]:
    """(/ping, the answer for a photo) of the endpoint's model archive served as its container serves it,
    with the Model's environment."""
    model_dir = workdir / "served"
    with tarfile.open(
        fileobj=io.BytesIO(s3_object(loop.aws, served["ModelDataUrl"])), mode="r:gz"
    ) as archive:
        archive.extractall(model_dir, filter="data")
    for name in (MODEL_PACKAGE_ENV, MODEL_VERSION_ENV):
        monkeypatch.setenv(name, served["Environment"][name])
    endpoint = EndpointProcess(model_dir, "--max-wait", "0").wait_ready()
    try:
        with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=30) as response:
            pinged = json.loads(response.read())
        request = urllib.request.Request(
            f"{endpoint.url}/invocations", data=labrador, headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        endpoint.stop()
    return pinged, answer


def rolled_back(loop: Loop, v1: str, v2: str) -> None:
    """Rolled back: prod runs version 1 again, version 2 is rejected, the record says so."""
    rolled = report(
        run_jobs(loop.capsys, "rollback", "--stage", "prod", "--chalice-dir", str(loop.chalice_dir))
    )
    assert (rolled["package"], rolled["replaced"]) == (v1, v2)
    assert endpoint_environment(loop.aws, "dogbreeds-prod")["Environment"][MODEL_PACKAGE_ENV] == v1
    assert package(loop.aws, v2)["ModelApprovalStatus"] == "Rejected"
    record = json.loads(s3_object(loop.aws, f"s3://{loop.aws.bucket}/dogbreeds/stages/prod.json"))
    assert (record["package"], record["deployed"]) == (v1, [v1])
    assert [entry["action"] for entry in record["history"]] == ["promote", "promote", "rollback"]
    # The dev stage still runs version 1; nothing older to roll back to there.
    refused = run_jobs(loop.capsys, "rollback", "--stage", "dev", "--chalice-dir", str(loop.chalice_dir))
    assert (
        refused.code == 2 and refused.err == "error: stage dev has no earlier model package to roll back to\n"
    )
    # A rejected package is not promoted again.
    refused = run_jobs(
        loop.capsys, "promote", "--package", v2, "--stage", "dev", "--chalice-dir", str(loop.chalice_dir)
    )
    assert refused.code == 2 and "is Rejected (rolled back from prod)" in refused.err


def test_a_worse_model_stops_at_the_gate_and_a_good_one_is_promoted_and_rolled_back(
    aws, photos, capsys, monkeypatch, tmp_path, labrador
):
    good, mislabeled = photos
    report(run_jobs(capsys, "upload-data", "--data", str(good)))
    report(run_jobs(capsys, "upload-data", "--data", str(mislabeled), "--prefix", "dogbreeds/new-photos"))
    player = PipelinePlayer(REGION, tmp_path / "played")
    loop = Loop(aws, capsys, player, hook_cli(monkeypatch, player), tmp_path / ".chalice")
    shutil.copytree(PROJECT / ".chalice", loop.chalice_dir)

    v1, figures = registered_first(loop)
    promoted_to_dev_and_prod(loop, v1)
    stopped_at_the_gate(loop, v1, figures)
    v2 = promoted_and_served(loop, monkeypatch, labrador, tmp_path)
    rolled_back(loop, v1, v2)


def test_an_answer_names_the_package_only_on_a_promoted_endpoint():
    config = json.loads((PROJECT / "models" / "default" / "config.json").read_text())
    assert model_identity(config, {}) == {"name": config["name"], "version": str(config["version"])}
    promoted = {
        MODEL_PACKAGE_ENV: "arn:aws:sagemaker:eu-west-1:1:model-package/dogbreeds/7",
        MODEL_VERSION_ENV: "7",
    }
    assert model_identity(config, promoted) == {
        "name": config["name"],
        "version": "7",
        "package": promoted[MODEL_PACKAGE_ENV],
    }
