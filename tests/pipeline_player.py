"""What SageMaker does with a pipeline run, played here: moto stores pipelines and runs no step.

The player reads the run's definition and parameters back from moto_server, resolves each step's arguments
(Get, Std:Join, Std:JsonGet) into the API request SageMaker would make, sends it to moto (so botocore
validates it against the API's shapes and moto records the job or the model package), and does what the job's
container would do with the same code: the training job's entry from its source archive, the processing job's
entry from its code archive, with the channels and inputs downloaded from S3 and the outputs uploaded back.
The condition step is evaluated from the definition's own JSON.

moto lacks ListPipelineExecutionSteps and keeps every run "Succeeded": `ExecutionAnswers` answers those two
calls on one client from what the player did (botocore hooks, after botocore has validated the request).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.validate import validate_parameters

PROCESSING = "/opt/ml/processing"
COMPARISONS = {
    "GreaterThanOrEqualTo": lambda left, right: left >= right,
    "GreaterThan": lambda left, right: left > right,
    "LessThanOrEqualTo": lambda left, right: left <= right,
    "LessThan": lambda left, right: left < right,
    "Equals": lambda left, right: left == right,
}


def validate(operation: str, params: dict) -> None:
    """Raises botocore's ParamValidationError unless `params` is a valid `operation` request."""
    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    validate_parameters(params, model.input_shape)


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass
class PlayedRun:
    arn: str
    status: str = "Executing"
    failure_reason: str | None = None
    steps: list[dict] = field(default_factory=list)  # as ListPipelineExecutionSteps answers them
    jobs: dict[str, dict] = field(default_factory=dict)  # step name -> the request sent for it
    evaluation: dict | None = None


class PipelinePlayer:
    def __init__(self, region: str, workdir: Path):
        self.sagemaker = boto3.client("sagemaker", region_name=region)
        self.s3 = boto3.client("s3", region_name=region)
        self.workdir = workdir
        self.runs: dict[str, PlayedRun] = {}

    # --- expressions ---

    def resolve(self, value, context: dict):
        if isinstance(value, list):
            return [self.resolve(item, context) for item in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Get"}:
            return context[value["Get"]]
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return join["On"].join(str(self.resolve(item, context)) for item in join["Values"])
        if set(value) == {"Std:JsonGet"}:
            found = context[value["Std:JsonGet"]["PropertyFile"]["Get"]]
            for part in value["Std:JsonGet"]["Path"].split("."):
                found = found[part]
            return found
        return {key: self.resolve(item, context) for key, item in value.items()}

    # --- S3 ---

    def download(self, uri: str, destination: Path) -> None:
        """An object, or every object under a prefix, into `destination` (keys relative to the prefix)."""
        bucket, prefix = split_uri(uri)
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        for item in listed:
            relative = item["Key"][len(prefix) :].lstrip("/") or Path(item["Key"]).name
            path = destination / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())

    def upload(self, folder: Path, uri: str) -> None:
        bucket, prefix = split_uri(uri)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
                self.s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    # --- the run ---

    def play(self, execution_arn: str) -> PlayedRun:
        run = self.runs[execution_arn] = PlayedRun(execution_arn)
        definition = json.loads(
            self.sagemaker.describe_pipeline_definition_for_execution(PipelineExecutionArn=execution_arn)[
                "PipelineDefinition"
            ]
        )
        given = self.sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution_arn)
        values = {item["Name"]: item["Value"] for item in given.get("PipelineParameters") or []}
        context = {"Execution.PipelineExecutionId": execution_arn.rsplit("/", 1)[-1]}
        for parameter in definition["Parameters"]:
            value = values.get(parameter["Name"], parameter["DefaultValue"])
            context[f"Parameters.{parameter['Name']}"] = (
                float(value) if parameter["Type"] == "Float" else value
            )
        for step in definition["Steps"]:
            self.step(run, step, context)
        if run.status == "Executing":
            run.status = "Succeeded"
        return run

    def step(self, run: PlayedRun, step: dict, context: dict) -> None:
        kind, name = step["Type"], step["Name"]
        arguments = self.resolve(step["Arguments"], context) if kind != "Condition" else None
        job_name = f"{name.lower()}-{context['Execution.PipelineExecutionId']}"
        entry = {"StepName": name, "StepStatus": "Succeeded", "Metadata": {}}
        if kind == "Training":
            request = {**arguments, "TrainingJobName": job_name}
            validate("CreateTrainingJob", request)
            self.sagemaker.create_training_job(**request)
            artifacts = self.sagemaker.describe_training_job(TrainingJobName=job_name)["ModelArtifacts"]
            self.train(request, artifacts["S3ModelArtifacts"])
            context[f"Steps.{name}.ModelArtifacts.S3ModelArtifacts"] = artifacts["S3ModelArtifacts"]
        elif kind == "Processing":
            request = {**arguments, "ProcessingJobName": job_name}
            validate("CreateProcessingJob", request)
            self.sagemaker.create_processing_job(**request)
            outputs = self.process(request)
            for property_file in step.get("PropertyFiles", []):
                path = outputs[property_file["OutputName"]] / property_file["FilePath"]
                run.evaluation = json.loads(path.read_text())
                context[f"Steps.{name}.PropertyFiles.{property_file['PropertyFileName']}"] = run.evaluation
        elif kind == "Condition":
            passed = all(
                COMPARISONS[condition["Type"]](
                    float(self.resolve(condition["LeftValue"], context)),
                    float(self.resolve(condition["RightValue"], context)),
                )
                for condition in step["Arguments"]["Conditions"]
            )
            entry["Metadata"] = {"Condition": {"Outcome": str(passed)}}
            run.steps.append(entry)
            for branch in step["Arguments"]["IfSteps" if passed else "ElseSteps"]:
                self.step(run, branch, context)
            return
        elif kind == "RegisterModel":
            validate("CreateModelPackage", arguments)
            arn = self.sagemaker.create_model_package(**arguments)["ModelPackageArn"]
            entry["Metadata"] = {"RegisterModel": {"Arn": arn}}
        elif kind == "Fail":
            entry["StepStatus"] = "Failed"
            entry["Metadata"] = {"Fail": {"ErrorMessage": arguments["ErrorMessage"]}}
            run.status, run.failure_reason = "Failed", arguments["ErrorMessage"]
        else:
            raise AssertionError(f"the player does not know step type {kind}")
        run.jobs[name] = arguments
        run.steps.append(entry)

    def train(self, request: dict, model_artifacts: str) -> None:
        """As the PyTorch training container: the source archive's entry, the hyperparameters as flags, the
        channels in SM_CHANNEL_*, then model.tar.gz of SM_MODEL_DIR uploaded."""
        root = self.workdir / request["TrainingJobName"]
        hyperparameters = request["HyperParameters"]
        code = root / "code"
        self.download(json.loads(hyperparameters["sagemaker_submit_directory"]), code)
        with tarfile.open(code / "sourcedir.tar.gz") as archive:
            archive.extractall(code, filter="data")
        env = {key: value for key, value in os.environ.items() if not key.startswith(("SM_", "RANK"))}
        for channel in request["InputDataConfig"]:
            local = root / "input" / channel["ChannelName"]
            self.download(channel["DataSource"]["S3DataSource"]["S3Uri"], local)
            env[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(local)
        env["SM_MODEL_DIR"] = str(root / "model")
        flags = [
            f"--{key}={value}" for key, value in hyperparameters.items() if not key.startswith("sagemaker_")
        ]
        command = [sys.executable, json.loads(hyperparameters["sagemaker_program"]), *flags]
        finished = subprocess.run(
            command, cwd=code, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in sorted((root / "model").iterdir()):
                archive.add(path, arcname=path.name)
        bucket, key = split_uri(model_artifacts)
        self.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    def process(self, request: dict) -> dict[str, Path]:
        """As the processing container: inputs downloaded to their local paths (under a folder standing for
        /opt/ml/processing), the code archive's entry run with the job's arguments, outputs uploaded.
        Returns output name -> local folder."""
        root = self.workdir / request["ProcessingJobName"]

        def local(path: str) -> Path:
            return root / Path(path).relative_to(PROCESSING)

        for source in request["ProcessingInputs"]:
            self.download(source["S3Input"]["S3Uri"], local(source["S3Input"]["LocalPath"]))
        code = next(
            local(source["S3Input"]["LocalPath"])
            for source in request["ProcessingInputs"]
            if source["InputName"] == "code"
        )
        with tarfile.open(next(code.glob("*.tar.gz"))) as archive:
            archive.extractall(code, filter="data")
        specification = request["AppSpecification"]
        # The entrypoint unpacks, installs the pinned packages (installed here already) and runs the entry.
        entry = specification["ContainerEntrypoint"][2].split("exec python ")[1].split()[0]
        arguments = [
            str(local(argument)) if argument.startswith(PROCESSING) else argument
            for argument in specification["ContainerArguments"]
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        finished = subprocess.run(
            [sys.executable, entry, *arguments, "--threads", "1"],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
        outputs = {}
        for output in request["ProcessingOutputConfig"]["Outputs"]:
            folder = local(output["S3Output"]["LocalPath"])
            self.upload(folder, output["S3Output"]["S3Uri"])
            outputs[output["OutputName"]] = folder
        return outputs


class ExecutionAnswers:
    """DescribePipelineExecution and ListPipelineExecutionSteps on one client, answered from played runs."""

    def __init__(self, client, player: PipelinePlayer) -> None:
        self.player = player
        client.meta.events.register("before-call.sagemaker.DescribePipelineExecution", self._describe)
        client.meta.events.register("before-call.sagemaker.ListPipelineExecutionSteps", self._steps)

    def _describe(self, params, **_):
        run = self.player.runs[json.loads(params["body"])["PipelineExecutionArn"]]
        answer = {"PipelineExecutionArn": run.arn, "PipelineExecutionStatus": run.status}
        if run.failure_reason:
            answer["FailureReason"] = run.failure_reason
        return AWSResponse("", 200, {}, None), answer

    def _steps(self, params, **_):
        run = self.player.runs[json.loads(params["body"])["PipelineExecutionArn"]]
        return AWSResponse("", 200, {}, None), {"PipelineExecutionSteps": list(run.steps)}
