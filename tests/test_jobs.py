"""`python -m training.jobs` against a real moto_server on loopback: what each command creates in "AWS"."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from dataclasses import replace
from importlib import metadata
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from conftest import PROJECT
from jobs_on_moto import (
    INFERENCE_IMAGE_CPU,
    REGION,
    ROLE,
    is_loopback,
    isolate_aws_env,
    report,
    run_jobs,
    s3_object,
    scaling_state,
    tar_members,
)
from moto_server import EndpointUpdates
from sagemaker_container import image_packages

from clients import batch, batch_results
from serving.contract import RECORD_JSON, X_IMAGE
from training.jobs import deploy
from training.jobs.autoscaling import ScalingSpec
from training.jobs.calls import Aws
from training.jobs.training_job import BACKBONES, METRIC_DEFINITIONS
from training.options import DEFAULT_BACKBONE

TRAINING_IMAGE_CPU = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6.0-cpu-py312"
TRAINING_IMAGE_GPU = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6.0-gpu-py312"

# Every test here is guarded against connecting anywhere but loopback.
pytestmark = pytest.mark.usefixtures("connections")


@pytest.fixture
def image_tree(dogs, tmp_path) -> Path:
    """A small ImageFolder tree of real photos: two breeds, train/valid/test."""
    root = tmp_path / "dogs"
    for split, count in (("train", 2), ("valid", 1), ("test", 1)):
        for folder in sorted((dogs / "train").iterdir())[:2]:
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.glob("*.jpg"))[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


def test_upload_data_puts_the_image_folder_tree_and_skips_what_is_there(aws, image_tree, capsys, connections):
    first = report(run_jobs(capsys, "upload-data", "--data", str(image_tree), "--prefix", "dogbreeds/data"))

    local = sorted(path.relative_to(image_tree).as_posix() for path in image_tree.rglob("*.jpg"))
    listed = aws.s3.list_objects_v2(Bucket=aws.bucket, Prefix="dogbreeds/data/")["Contents"]
    assert sorted(item["Key"].removeprefix("dogbreeds/data/") for item in listed) == local
    assert {item["Key"].split("/")[2] for item in listed} == {"train", "valid", "test"}
    assert first == {"uploaded": len(local), "unchanged": 0, "location": f"s3://{aws.bucket}/dogbreeds/data/"}
    second = report(run_jobs(capsys, "upload-data", "--data", str(image_tree), "--prefix", "dogbreeds/data"))
    assert (second["uploaded"], second["unchanged"]) == (0, len(local))
    assert connections and all(is_loopback(host) for host, _ in connections)


def test_upload_data_refuses_a_folder_without_train_split(aws, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    result = run_jobs(capsys, "upload-data", "--data", str(tmp_path / "photos"))
    assert result.code == 2
    assert result.err.startswith("error: ") and "ImageFolder" in result.err and "Traceback" not in result.err


def test_train_on_one_cpu_instance(aws, capsys, connections):
    started = report(
        run_jobs(
            capsys,
            "train",
            "--instance-type",
            "ml.m5.xlarge",
            "--instance-count",
            "1",
            "--hyperparameters",
            "backbone=efficientnet-lite0",
            "epochs=4",
            "batch-size=64",
            "lr=0.003",
        )
    )

    job = aws.sagemaker.describe_training_job(TrainingJobName=started["job_name"])
    assert job["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE_CPU
    assert job["RoleArn"] == ROLE
    hyperparameters = job["HyperParameters"]
    assert {key: hyperparameters[key] for key in ("backbone", "epochs", "batch-size", "lr")} == {
        "backbone": "efficientnet-lite0",
        "epochs": "4",
        "batch-size": "64",
        "lr": "0.003",
    }
    assert json.loads(hyperparameters["sagemaker_program"]) == "sagemaker_train.py"
    assert "sagemaker_torch_distributed_enabled" not in hyperparameters
    channels = {
        channel["ChannelName"]: channel["DataSource"]["S3DataSource"]["S3Uri"]
        for channel in job["InputDataConfig"]
    }
    assert channels == {
        "train": f"s3://{aws.bucket}/dogbreeds/data/train/",
        "valid": f"s3://{aws.bucket}/dogbreeds/data/valid/",
    }
    # (moto's DescribeTrainingJob answers canned MetricDefinitions; the dry-run test checks the sent ones.)
    assert started["model_data"] == job["ModelArtifacts"]["S3ModelArtifacts"]
    assert started["model_data"].startswith(f"s3://{aws.bucket}/dogbreeds/output/{started['job_name']}/")

    # The code SageMaker runs: the training package, its entry shim and the container's extra packages.
    code = tar_members(s3_object(aws, json.loads(hyperparameters["sagemaker_submit_directory"])))
    assert {
        "sagemaker_train.py",
        "requirements.txt",
        "training/train.py",
        "classifier/model.py",
    } <= code.keys()
    assert code["classifier/model.py"] == (PROJECT / "classifier" / "model.py").read_bytes()
    # The training job ships training/ and the model package, never the endpoint's or the clients' code.
    assert {name.split("/")[0] for name in code if "/" in name} == {"training", "classifier"}
    assert not any(name.startswith("training/jobs") for name in code)
    # Only what training imports: not the handlers or their entry point, not the local server.
    left_home = {"inference.py", "serving/server.py", "serving/inference.py", "clients/batch.py"}
    assert not left_home & code.keys()
    assert b"efficientnet-lite-pytorch==" in code["requirements.txt"]
    assert connections


def test_training_code_runs_as_the_container_runs_it(aws, image_tree, capsys, tmp_path):
    """What the PyTorch training toolkit does: unpack sagemaker_submit_directory into /opt/ml/code, set the
    SM_* variables, run `python <sagemaker_program> --<name> <value> ...`. Its log must feed the tuner."""
    cache = tmp_path / "cache"
    argv = ("backbone=efficientnet-lite0", "epochs=2", "batch-size=4", "lr=0.01", f"cache-dir={cache}")
    started = report(run_jobs(capsys, "train", "--hyperparameters", *argv))
    hyperparameters = aws.sagemaker.describe_training_job(TrainingJobName=started["job_name"])[
        "HyperParameters"
    ]

    code_dir = tmp_path / "opt-ml-code"
    archive = s3_object(aws, json.loads(hyperparameters["sagemaker_submit_directory"]))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code_dir, filter="data")
    flags = [
        part
        for key, value in sorted(hyperparameters.items())
        if not key.startswith("sagemaker_")
        for part in (f"--{key}", value)
    ]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        SM_CHANNEL_TRAIN=str(image_tree / "train"),
        SM_CHANNEL_VALID=str(image_tree / "valid"),
        SM_MODEL_DIR=str(tmp_path / "opt-ml-model"),
        SM_HOSTS='["algo-1"]',
        SM_CURRENT_HOST="algo-1",
        OMP_NUM_THREADS="1",
    )
    program = json.loads(hyperparameters["sagemaker_program"])
    trained = subprocess.run(
        [sys.executable, program, *flags],
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    accuracies = re.findall(METRIC_DEFINITIONS[0].regex, trained.stdout)
    assert len(accuracies) >= 2 and all(0.0 <= float(value) <= 1.0 for value in accuracies)
    written = {path.name for path in (tmp_path / "opt-ml-model").iterdir()}
    assert {"config.json", "labels.json", "weights.pt"} <= written


def test_train_on_several_gpu_instances_uses_torchrun(aws, capsys):
    started = report(run_jobs(capsys, "train", "--instance-type", "ml.g5.xlarge", "--instance-count", "2"))

    job = aws.sagemaker.describe_training_job(TrainingJobName=started["job_name"])
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30}
    assert job["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE_GPU
    assert json.loads(job["HyperParameters"]["sagemaker_torch_distributed_enabled"]) is True
    assert json.loads(job["HyperParameters"]["sagemaker_instance_type"]) == "ml.g5.xlarge"


def test_train_on_several_cpu_instances_leaves_the_hosts_to_the_script(aws, capsys):
    started = report(run_jobs(capsys, "train", "--instance-type", "ml.m5.xlarge", "--instance-count", "3"))

    job = aws.sagemaker.describe_training_job(TrainingJobName=started["job_name"])
    assert job["ResourceConfig"]["InstanceCount"] == 3
    assert job["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE_CPU
    assert "sagemaker_torch_distributed_enabled" not in job["HyperParameters"]


def test_torchrun_on_cpu_instances_is_refused_as_the_sdk_does(aws, capsys):
    name = f"refused-{uuid.uuid4().hex[:8]}"
    argv = ("--instance-type", "ml.m5.xlarge", "--instance-count", "2", "--distribution", "torchrun")
    result = run_jobs(capsys, "train", *argv, "--job-name", name)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "supported only for GPU and Trainium" in result.err
    with pytest.raises(aws.sagemaker.exceptions.ClientError, match="Could not find"):
        aws.sagemaker.describe_training_job(TrainingJobName=name)


def test_tune_searches_the_four_hyperparameters_for_valid_accuracy(aws, capsys):
    result = report(
        run_jobs(capsys, "tune", "--max-jobs", "6", "--max-parallel", "2", "--hyperparameters", "workers=2")
    )

    tuning = aws.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result["tuning_job"]
    )
    config = tuning["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid_accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.03", "ScalingType": "Logarithmic"}
    ]
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "epochs", "MinValue": "3", "MaxValue": "15", "ScalingType": "Linear"}
    ]
    categorical = {item["Name"]: item["Values"] for item in ranges["CategoricalParameterRanges"]}
    assert categorical == {
        "batch-size": ["32", "64", "128"],
        "backbone": list(BACKBONES),
    }
    assert BACKBONES[-1] == DEFAULT_BACKBONE  # the tuner also tries what training does by default
    definition = tuning["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "valid_accuracy", "Regex": r"valid_accuracy=([0-9\.]+);"}
    ]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE_CPU
    assert definition["StaticHyperParameters"]["workers"] == "2"
    assert not {"lr", "epochs", "batch-size", "backbone"} & definition["StaticHyperParameters"].keys()
    # The report is what DescribeHyperParameterTuningJob says (moto answers at once with a canned best job).
    assert result["status"] == tuning["HyperParameterTuningJobStatus"]
    assert result["best_training_job"] == tuning["BestTrainingJob"]["TrainingJobName"]


def test_tune_refuses_to_fix_a_searched_hyperparameter(aws, capsys):
    result = run_jobs(capsys, "tune", "--hyperparameters", "lr=0.01")
    assert result.code == 2 and "tune searches lr" in result.err


def test_deploy_twice_then_teardown(aws, trained_model, capsys, connections):
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    deploy = (
        "deploy",
        "--model-data",
        trained_model,
        "--endpoint-name",
        name,
        "--instance-type",
        "ml.m5.large",
        "--min-instances",
        "1",
        "--max-instances",
        "4",
        "--target-invocations",
        "100",
        "--scale-in-cooldown",
        "600",
        "--scale-out-cooldown",
        "90",
    )
    first = report(run_jobs(capsys, *deploy))

    model = aws.sagemaker.describe_model(ModelName=first["model"])
    assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE_CPU
    assert model["PrimaryContainer"]["ModelDataUrl"] == first["model_data"]
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["ExecutionRoleArn"] == ROLE
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=first["endpoint_config"])
    (variant,) = config["ProductionVariants"]
    assert (variant["VariantName"], variant["ModelName"]) == ("AllTraffic", first["model"])
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
    described = aws.sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointConfigName"] == first["endpoint_config"]
    assert described["EndpointStatus"] == "InService"
    (target,), (policy,) = scaling_state(aws, name)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 100.0
    assert (
        tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
        == "SageMakerVariantInvocationsPerInstance"
    )
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (600, 90)

    # The endpoint's model.tar.gz: the trained files at the top, this project's code under code/.
    repacked = tar_members(s3_object(aws, first["model_data"]))
    assert {
        "config.json",
        "labels.json",
        "weights.pt",
        "code/inference.py",
        "code/serving/inference.py",
        "code/classifier/model.py",
    } <= set(repacked)
    # Exactly what the handlers import: not the local server (uvicorn), training or evaluation (matplotlib).
    left_home = {"code/serving/server.py", "code/training/train.py", "code/training/evaluate.py"}
    assert not left_home & set(repacked)

    second = report(run_jobs(capsys, *deploy))
    assert second == first
    assert [m["ModelName"] for m in aws.sagemaker.list_models(NameContains=name)["Models"]] == [
        first["model"]
    ]
    configs = aws.sagemaker.list_endpoint_configs(NameContains=name)["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == [first["endpoint_config"]]
    targets, policies = scaling_state(aws, name)
    assert len(targets) == 1 and len(policies) == 1

    torn = report(run_jobs(capsys, "teardown", "--endpoint-name", name))
    assert torn == {"endpoint": name, "deleted": True}
    assert scaling_state(aws, name) == ([], [])
    assert aws.sagemaker.list_endpoints(NameContains=name)["Endpoints"] == []
    assert aws.sagemaker.list_endpoint_configs(NameContains=name)["EndpointConfigs"] == []
    assert aws.sagemaker.list_models(NameContains=name)["Models"] == []
    again = run_jobs(capsys, "teardown", "--endpoint-name", name)
    assert report(again) == {"endpoint": name, "deleted": False} and "does not exist" in again.err
    assert connections and all(is_loopback(host) for host, _ in connections)


def test_deploy_of_a_new_model_updates_the_endpoint(aws, trained_model, capsys):
    """moto has no UpdateEndpoint: botocore hooks answer it (moto_server.EndpointUpdates)."""
    name = f"dogs-{uuid.uuid4().hex[:8]}"
    spec = deploy.EndpointSpec(
        region=REGION,
        role=ROLE,
        bucket=aws.bucket,
        prefix="dogbreeds",
        model_data=trained_model,
        instance_type="ml.m5.large",
        scaling=ScalingSpec(endpoint_name=name, min_instances=1, max_instances=2, target_invocations=50),
    )
    first = deploy.deploy(Aws(REGION), spec, print)
    aws_again = Aws(REGION)
    updates = EndpointUpdates(aws_again.client("sagemaker"))
    bigger = replace(spec, instance_type="ml.c5.xlarge", scaling=replace(spec.scaling, max_instances=6))
    second = deploy.deploy(aws_again, bigger, print)

    (update,) = updates.requests
    assert (update["EndpointName"], update["EndpointConfigName"]) == (name, second["endpoint_config"])
    # Blue/green, never delete + create: the old fleet serves until the new one has taken all traffic.
    assert update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == (
        "ALL_AT_ONCE"
    )
    assert second["endpoint_config"] != first["endpoint_config"]
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=second["endpoint_config"])
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.c5.xlarge"
    (target,), (policy,) = scaling_state(aws, name)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 6)
    # The replaced config is gone; the model (same archive and image) serves the new config, so it stays.
    configs = aws.sagemaker.list_endpoint_configs(NameContains=name)["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == [second["endpoint_config"]]
    assert second["model"] == first["model"]
    assert [m["ModelName"] for m in aws.sagemaker.list_models(NameContains=name)["Models"]] == [
        first["model"]
    ]
    deploy.teardown(Aws(REGION), name, print)


def absent_from_the_container(code_requirements: str) -> list[str]:
    """Top-level modules of what requirements-dev.txt installs here that the inference image lacks and the
    archive's code/requirements.txt does not install there (onnxruntime, were it dropped from it)."""
    there = {
        re.split(r"[=<>\[ ]", line.strip())[0].lower()
        for line in (*image_packages(), *code_requirements.splitlines())
        if line.strip()
    }
    here = {
        re.split(r"[=<>\[ ]", line.strip())[0].lower()
        for path in (PROJECT / "requirements.txt", PROJECT / "requirements-dev.txt")
        for line in path.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    modules = packages_distributions()
    return sorted(
        module
        for module, distributions in modules.items()
        if {name.lower() for name in distributions} & (here - there)
        and not {name.lower() for name in distributions} & there
    )


# The handlers' chain as the inference container runs it: code/ on sys.path, `import inference`, model_fn on
# the unpacked model, then a photo through input_fn, predict_fn and output_fn. Modules the container would not
# have (argv[3]) cannot be imported.
CONTAINER_SCRIPT = """
import importlib.abc, json, sys
from pathlib import Path
absent = set(json.loads(sys.argv[3]))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} in the container", name=name)
sys.meta_path.insert(0, Absent())
import inference, serving
assert Path(serving.__file__).resolve().is_relative_to(Path.cwd().resolve()), serving.__file__
model = inference.model_fn(sys.argv[1])
data = inference.input_fn(Path(sys.argv[2]).read_bytes(), "image/jpeg")
answer = inference.output_fn(inference.predict_fn(data, model), "application/json")
print(json.dumps({"runtime": model.runtime, "answer": json.loads(answer)}))
"""


def serve_unpacked(model_dir: Path, photo: Path) -> dict:
    """CONTAINER_SCRIPT on an unpacked model.tar.gz: {"runtime": what model_fn chose, "answer": ...}."""
    absent = absent_from_the_container((model_dir / "code" / "requirements.txt").read_text())
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    served = subprocess.run(
        [sys.executable, "-c", CONTAINER_SCRIPT, str(model_dir), str(photo), json.dumps(absent)],
        cwd=model_dir / "code",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    return json.loads(served.stdout.splitlines()[-1])


def test_repacked_model_serves_a_photo_with_the_packaged_code_and_onnx_runtime(
    aws, trained_model, samples, capsys, tmp_path
):
    """What the inference container does with the archive deploy uploads. Without onnxruntime in
    code/requirements.txt the handlers would fall back to PyTorch, which this catches without the slow
    emulation of the image (tests/test_container.py)."""
    deployed = report(
        run_jobs(capsys, "deploy", "--model-data", trained_model, "--endpoint-name", "serve-check")
    )
    model_dir = tmp_path / "opt-ml-model"
    with tarfile.open(fileobj=io.BytesIO(s3_object(aws, deployed["model_data"])), mode="r:gz") as tar:
        tar.extractall(model_dir, filter="data")
    requirements = (model_dir / "code" / "requirements.txt").read_text().splitlines()
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in requirements
    assert "onnxruntime" in absent_from_the_container("")

    served = serve_unpacked(model_dir, samples / "Labrador_retriever_06455.jpg")
    assert served["runtime"] == "onnxruntime"
    assert served["answer"]["predictions"][0]["label"] == "Labrador_retriever"
    run_jobs(capsys, "teardown", "--endpoint-name", "serve-check")


def test_transform_runs_a_batch_transform_job_and_summarises_its_output(
    aws, trained_model, samples, endpoint, tmp_path, capsys, connections
):
    """moto records the job and calls it Completed at once, but runs no container and writes no output. The
    test plays the job's part beforehand: the local batch command sends each input object to the real
    endpoint as the job would and its .out files go where the job writes them."""
    photos = {
        "shelter/a/lab.jpg": (samples / "Labrador_retriever_06455.jpg").read_bytes(),
        "shelter/b/spaniel.jpg": (samples / "American_water_spaniel_00648.jpg").read_bytes(),
        "shelter/notes.txt": b"not a photo",
        "shelter/lost.jpg": (samples / "Labrador_retriever_06455.jpg").read_bytes(),
    }
    for key, body in photos.items():
        aws.s3.put_object(Bucket=aws.bucket, Key=f"in/{key}", Body=body)
    # The job's part: every object but lost.jpg answered (a record the container failed on gets no .out).
    local_in, local_out = tmp_path / "in", tmp_path / "out"
    for key, body in photos.items():
        if key != "shelter/lost.jpg":
            (local_in / key).parent.mkdir(parents=True, exist_ok=True)
            (local_in / key).write_bytes(body)
    played = batch.main(
        [str(local_in), "-o", str(tmp_path / "local.csv"), "--endpoint", endpoint.url]
        + ["--transform-output", str(local_out)]
    )
    assert played == batch.EXIT_FAILED  # notes.txt
    for path in local_out.rglob("*.out"):
        key = f"out/{path.relative_to(local_out).as_posix()}"
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=path.read_bytes())
    capsys.readouterr()

    results = tmp_path / "shelter.csv"
    argv = ("transform", "--model-data", trained_model, "--input", f"s3://{aws.bucket}/in")
    argv += ("--output", f"s3://{aws.bucket}/out/", "--instance-count", "2", "--job-name", "shelter-1")
    finished = run_jobs(capsys, *argv, "--results", str(results))

    job = aws.sagemaker.describe_transform_job(TransformJobName="shelter-1")
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{aws.bucket}/in/"}},
        "ContentType": X_IMAGE,
        "CompressionType": "None",
        "SplitType": "None",
    }
    assert job["TransformOutput"] == {
        "S3OutputPath": f"s3://{aws.bucket}/out/",
        "Accept": RECORD_JSON,
        "AssembleWith": "None",
    }
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
    # ml.m5.xlarge has 4 vCPUs: 4 model server workers, 4 requests in flight to each instance.
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (4, 6)
    assert job["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "4"
    model = aws.sagemaker.describe_model(ModelName=job["ModelName"])
    assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE_CPU
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    archive = tar_members(s3_object(aws, model["PrimaryContainer"]["ModelDataUrl"]))
    assert {"config.json", "weights.pt", "code/inference.py", "code/serving/inference.py"} <= set(archive)
    assert not any(name.startswith(("code/clients/", "code/training/")) for name in archive)

    # One results file from the .out objects, the inputs without one named.
    assert finished.code == 1, finished.err
    summary = json.loads(finished.out)
    assert (summary["status"], summary["results"]) == ("Completed", str(results))
    assert summary["summary"]["failures"] == {"unreadable_image": 1, "no_output": 1}
    assert summary["summary"]["images"] == 4 and summary["summary"]["classified"] == 2
    assert "transform job shelter-1: Completed, 3 of 4 objects answered" in finished.err
    rows = {row.key: row for row in batch_results.read_rows(results, "csv")}
    assert rows["shelter/a/lab.jpg"].label == "Labrador_retriever"
    assert rows["shelter/notes.txt"].error == "unreadable_image"
    assert rows["shelter/lost.jpg"].error == "no_output"
    # The same .out files make the same rows locally and from S3.
    local_rows = batch_results.read_rows(tmp_path / "local.csv", "csv")
    assert len(local_rows) == 3 and all(rows[row.key] == row for row in local_rows)

    # Run again with the same name: it waits for that job instead of starting another.
    again = run_jobs(capsys, *argv, "--results", str(tmp_path / "again.jsonl"))
    assert "transform job shelter-1 exists" in again.err
    assert [
        job["TransformJobName"] for job in aws.sagemaker.list_transform_jobs()["TransformJobSummaries"]
    ] == ["shelter-1"]
    assert connections and all(is_loopback(host) for host, _ in connections)


def test_dry_run_prints_every_request_and_connects_nowhere(
    image_tree, monkeypatch, tmp_path, capsys, connections
):
    isolate_aws_env(monkeypatch, tmp_path)
    common = ("--region", REGION, "--role", ROLE, "--bucket", "nowhere", "--dry-run")
    commands = {
        "upload-data": ("upload-data", "--data", str(image_tree)),
        "train": ("train", "--instance-type", "ml.g5.xlarge", "--instance-count", "2"),
        "tune": ("tune", "--max-jobs", "4"),
        "deploy": ("deploy", "--model-data", "s3://nowhere/model.tar.gz", "--endpoint-name", "dogs"),
        "teardown": ("teardown", "--endpoint-name", "dogs"),
        "transform": (
            "transform",
            "--model-data",
            "s3://nowhere/model.tar.gz",
            "--input",
            "s3://nowhere/in/",
            "--output",
            "s3://nowhere/out/",
        ),
    }
    printed = {}
    for command, argv in commands.items():
        result = run_jobs(capsys, *argv, *common)
        assert result.code == 0, result.err
        assert result.out, f"{command} printed no requests"
        printed[command] = [json.loads(line) for line in result.out.splitlines()]

    def operations(command: str) -> list[str]:
        return [request["operation"] for request in printed[command]]

    assert operations("upload-data") == ["PutObject"] * len(list(image_tree.rglob("*.jpg")))
    assert operations("train") == ["PutObject", "CreateTrainingJob", "DescribeTrainingJob"]
    created = printed["train"][1]["params"]
    assert created["ResourceConfig"]["InstanceCount"] == 2
    assert created["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert created["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "valid_accuracy", "Regex": r"valid_accuracy=([0-9\.]+);"}
    ]
    assert operations("tune") == [
        "PutObject",
        "CreateHyperParameterTuningJob",
        "DescribeHyperParameterTuningJob",
    ]
    assert [op for op in operations("deploy") if not op.startswith("Describe")] == [
        "PutObject",
        "CreateModel",
        "CreateEndpointConfig",
        *["PutMetricAlarm"] * 3,
        "CreateEndpoint",
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert [op for op in operations("teardown") if not op.startswith("Describe")] == [
        "DeleteScalingPolicy",
        "DeregisterScalableTarget",
        "DeleteAlarms",
        "DeleteEndpoint",
        "DeleteEndpointConfig",
        "DeleteModel",
    ]
    assert [op for op in operations("transform") if not op.startswith("Describe")] == [
        "PutObject",
        "CreateModel",
        "CreateTransformJob",
    ]
    created = printed["transform"][-1]["params"]
    assert created["TransformOutput"]["Accept"] == RECORD_JSON and created["MaxConcurrentTransforms"] == 4
    assert connections == []


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({}, ("teardown", "--endpoint-name", "dogs"), "error: no AWS region"),
        ({"AWS_DEFAULT_REGION": REGION}, ("train",), "error: no IAM role"),
        ({"AWS_REGION": REGION, "SAGEMAKER_ROLE_ARN": ROLE}, ("train",), "error: no S3 bucket"),
        (
            {"AWS_REGION": REGION},
            ("train", "--role", "dogbreeds", "--bucket", "b"),
            "error: --role must be an IAM role ARN",
        ),
        (
            {"AWS_REGION": REGION},
            ("deploy", "--model-data", "model.tar.gz", "--endpoint-name", "d", "--role", ROLE),
            "error: expected s3://BUCKET/KEY",
        ),
        (
            {"AWS_REGION": REGION},
            (
                "transform",
                "--model-data",
                "s3://b/m.tar.gz",
                "--input",
                "s3://b/in",
                "--output",
                "s3://b/in/out",
            )
            + ("--role", ROLE),
            "error: --output s3://b/in/out/ must not overlap --input s3://b/in/",
        ),
        (
            {"AWS_REGION": REGION},
            ("transform", "--model-data", "s3://b/m.tar.gz", "--input", "s3://b/in", "--output", "s3://b/out")
            + ("--role", ROLE, "--instance-type", "ml.inf2.metal"),
            "error: cannot tell the vCPUs of ml.inf2.metal: pass --workers",
        ),
    ],
)
def test_missing_settings_are_one_line_errors(env, argv, message, monkeypatch, tmp_path, capsys, connections):
    isolate_aws_env(monkeypatch, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_jobs(capsys, *argv, "--dry-run")
    assert result.code == 2
    assert result.err.startswith(message) and result.err.count("\n") == 1
    assert connections == []


def test_missing_credentials_are_a_one_line_error(aws, monkeypatch, capsys, connections):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    # The last link of boto3's credential chain asks the EC2 metadata service, which is not loopback.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = run_jobs(capsys, "teardown", "--endpoint-name", "dogs")
    assert result.code == 2
    assert result.err.startswith("error: no AWS credentials") and result.err.count("\n") == 1


def test_command_line_process(aws, tmp_path):
    """The real `python -m training.jobs` process: a training job, then a missing role as exit code 2."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.jobs",
            "train",
            "--instance-count",
            "2",
            "--hyperparameters",
            "epochs=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    job = aws.sagemaker.describe_training_job(TrainingJobName=json.loads(started.stdout)["job_name"])
    assert job["ResourceConfig"]["InstanceCount"] == 2 and job["HyperParameters"]["epochs"] == "2"

    del env["SAGEMAKER_ROLE_ARN"]
    refused = subprocess.run(
        [sys.executable, "-m", "training.jobs", "train"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr == "error: no IAM role for SageMaker: pass --role ARN or set SAGEMAKER_ROLE_ARN\n"
    assert refused.stdout == ""
