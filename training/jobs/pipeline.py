"""A SageMaker Pipeline as code: train -> evaluate -> quality gate -> register in the Model Registry.

    Train        the CreateTrainingJob request of `train` (training_job.training_job_request)
    Evaluate     a processing job running training/registry_evaluation.py on the data's test/ split, which the
                 training never sees: writes evaluation.json (the gate's figures and the full evaluation) and
                 the model repacked as `deploy` repacks it
    QualityGate  top-1 at least MinTop1 (`pipeline start` sets it: the approved package's top-1 less a margin)
                 and ECE at most MaxEce; if not, GateFailed (a Fail step) ends the run and says why
    Register     CreateModelPackage in the package group, PendingManualApproval, evaluation.json attached as
                 its ModelMetrics, the repacked archive as its model

Step arguments are the API requests the standalone commands send, built by the same functions with
`{{Name}}` placeholders where a value is only known while the pipeline runs (a step's output, the execution's
id, a parameter); `with_references` turns them into the pipeline's expressions (Get, Std:Join).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

from sagemaker.core import shapes
from sagemaker.core.utils.utils import serialize

from training.jobs.calls import Aws, AwsCall
from training.jobs.deploy import container_environment, inference_image_uri
from training.jobs.launch import upload_code
from training.jobs.source_bundle import EVALUATE_ENTRY, digest, evaluation_archive
from training.jobs.storage import parse_s3_uri
from training.jobs.training_job import JobSpec, training_image, training_job_request

DEFINITION_VERSION = "2020-12-01"
TRAIN, EVALUATE, GATE, REGISTER, FAIL = "Train", "Evaluate", "QualityGate", "Register", "GateFailed"
PROPERTY_FILE = "Evaluation"
EVALUATION_FILE = "evaluation.json"
MIN_TOP1, MAX_ECE = "MinTop1", "MaxEce"
DEFAULT_MAX_ECE = 0.03
DEFAULT_MARGIN = 0.01
PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
EXECUTION_ID = "{{Execution.PipelineExecutionId}}"
MODEL_ARTIFACTS = f"{{{{Steps.{TRAIN}.ModelArtifacts.S3ModelArtifacts}}}}"
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9_.]+)\}\}")
PROCESSING = "/opt/ml/processing"
CODE_DIR, MODEL_DIR, TEST_DIR = f"{PROCESSING}/input/code", f"{PROCESSING}/model", f"{PROCESSING}/test"
EVALUATION_DIR, REPACKED_DIR = f"{PROCESSING}/evaluation", f"{PROCESSING}/repacked"
# The processing job starts in the PyTorch training image (torch, numpy, Pillow): unpack the code, add its
# packages, run the entry with the job's arguments ("$@").
ENTRYPOINT = [
    "/bin/bash",
    "-c",
    f"cd {CODE_DIR} && tar -xzf evaluation.tar.gz && pip install -q -r requirements.txt "
    f'&& exec python {EVALUATE_ENTRY} "$@"',
    "evaluate",
]


@dataclass(frozen=True)
class PipelineSpec:
    job: JobSpec  # the training job's settings; its bucket and prefix also hold the runs' outputs
    name: str
    package_group: str
    hyperparameters: dict[str, str] = field(default_factory=dict)
    evaluation_instance_type: str = "ml.m5.xlarge"
    endpoint_instance_type: str = "ml.m5.large"  # what the registered model's image is for

    @property
    def region(self) -> str:  # what container_environment reads
        return self.job.region

    @property
    def test_uri(self) -> str:
        return f"s3://{self.job.bucket}/{self.job.data_prefix.strip('/')}/test/"

    @property
    def run_uri(self) -> str:
        return self.job.s3("pipelines", self.name, EXECUTION_ID)


def with_references(value):
    """`value` with each string holding `{{Name}}` placeholders made a pipeline expression: {"Get": Name}
    for a lone placeholder, else Std:Join of the text and the placeholders."""
    if isinstance(value, dict):
        return {key: with_references(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_references(item) for item in value]
    if not isinstance(value, str) or not _PLACEHOLDER.search(value):
        return value
    parts = _PLACEHOLDER.split(value)
    values = [{"Get": part} if index % 2 else part for index, part in enumerate(parts) if part or index % 2]
    return values[0] if len(values) == 1 else {"Std:Join": {"On": "", "Values": values}}


def evaluation_request(spec: PipelineSpec, job_name: str, model_uri: str, run_uri: str, code_uri: str):
    """CreateProcessingJob for the evaluation of the archive at `model_uri`; outputs under `run_uri`."""

    def source(name: str, uri: str, local: str) -> shapes.ProcessingInput:
        return shapes.ProcessingInput(
            input_name=name,
            s3_input=shapes.ProcessingS3Input(
                s3_uri=uri, local_path=local, s3_data_type="S3Prefix", s3_input_mode="File"
            ),
        )

    def output(name: str, local: str) -> shapes.ProcessingOutput:
        return shapes.ProcessingOutput(
            output_name=name,
            s3_output=shapes.ProcessingS3Output(
                s3_uri=f"{run_uri}/{name}", local_path=local, s3_upload_mode="EndOfJob"
            ),
        )

    arguments = ["--model-archive", f"{MODEL_DIR}/model.tar.gz", "--data", TEST_DIR]
    arguments += ["--evaluation", EVALUATION_DIR, "--repacked", REPACKED_DIR]
    params = {
        "ProcessingJobName": job_name,
        "RoleArn": spec.job.role,
        "AppSpecification": shapes.AppSpecification(
            image_uri=training_image(spec.region, spec.evaluation_instance_type),
            container_entrypoint=ENTRYPOINT,
            container_arguments=arguments,
        ),
        "ProcessingInputs": [
            source("code", code_uri, CODE_DIR),
            source("model", model_uri, MODEL_DIR),
            source("test", spec.test_uri, TEST_DIR),
        ],
        "ProcessingOutputConfig": shapes.ProcessingOutputConfig(
            outputs=[output("evaluation", EVALUATION_DIR), output("repacked", REPACKED_DIR)]
        ),
        "ProcessingResources": shapes.ProcessingResources(
            cluster_config=shapes.ProcessingClusterConfig(
                instance_count=1, instance_type=spec.evaluation_instance_type, volume_size_in_gb=30
            )
        ),
        "StoppingCondition": shapes.ProcessingStoppingCondition(max_runtime_in_seconds=3600),
    }
    return AwsCall("sagemaker", "CreateProcessingJob", serialize(params))


def register_request(spec: PipelineSpec, model_data_url: str, evaluation_uri: str) -> AwsCall:
    """CreateModelPackage: the repacked archive on the inference image, its evaluation as ModelMetrics."""
    params = {
        "ModelPackageGroupName": spec.package_group,
        "ModelPackageDescription": f"trained and evaluated by pipeline {spec.name}",
        "ModelApprovalStatus": PENDING,
        # sagemaker-core's InferenceSpecification shape drops the containers' Environment: a plain mapping.
        "InferenceSpecification": {
            "Containers": [
                shapes.ModelPackageContainerDefinition(
                    image=inference_image_uri(spec.region, spec.endpoint_instance_type),
                    model_data_url=model_data_url,
                    environment=container_environment(spec),
                )
            ]
        },
        "ModelMetrics": shapes.ModelMetrics(
            model_quality=shapes.ModelQuality(
                statistics=shapes.MetricsSource(content_type="application/json", s3_uri=evaluation_uri)
            )
        ),
    }
    return AwsCall("sagemaker", "CreateModelPackage", serialize(params))


def evaluation_figure(name: str) -> dict:
    """A figure of the Evaluate step's evaluation.json, as the pipeline reads it."""
    property_file = {"Get": f"Steps.{EVALUATE}.PropertyFiles.{PROPERTY_FILE}"}
    return {"Std:JsonGet": {"PropertyFile": property_file, "Path": f"metrics.{name}"}}


def gate_step(register: dict) -> dict:
    """Both conditions hold: Register; else GateFailed, whose message is the run's failure reason."""
    top1, ece = evaluation_figure("top1"), evaluation_figure("ece")
    min_top1, max_ece = {"Get": f"Parameters.{MIN_TOP1}"}, {"Get": f"Parameters.{MAX_ECE}"}
    reason = ["quality gate failed: top-1 ", top1, " must be at least ", min_top1]
    reason += [" (the approved package's less the margin) and ECE ", ece, " at most ", max_ece]
    fail = {
        "Name": FAIL,
        "Type": "Fail",
        "Arguments": {"ErrorMessage": {"Std:Join": {"On": "", "Values": reason}}},
    }
    return {
        "Name": GATE,
        "Type": "Condition",
        "Arguments": {
            "Conditions": [
                {"Type": "GreaterThanOrEqualTo", "LeftValue": top1, "RightValue": min_top1},
                {"Type": "LessThanOrEqualTo", "LeftValue": ece, "RightValue": max_ece},
            ],
            "IfSteps": [{"Name": REGISTER, "Type": "RegisterModel", "Arguments": register}],
            "ElseSteps": [fail],
        },
    }


def definition(spec: PipelineSpec, code_uri: str, evaluation_code_uri: str) -> dict:
    """The pipeline definition (SageMaker's JSON schema, version 2020-12-01)."""
    train = training_job_request(spec.job, spec.name, code_uri, spec.hyperparameters).params
    evaluate = evaluation_request(spec, spec.name, MODEL_ARTIFACTS, spec.run_uri, evaluation_code_uri).params
    register = register_request(
        spec, f"{spec.run_uri}/repacked/model.tar.gz", f"{spec.run_uri}/evaluation/{EVALUATION_FILE}"
    ).params
    property_file = {
        "PropertyFileName": PROPERTY_FILE,
        "OutputName": "evaluation",
        "FilePath": EVALUATION_FILE,
    }
    steps = [
        {"Name": TRAIN, "Type": "Training", "Arguments": without(train, "TrainingJobName")},
        {
            "Name": EVALUATE,
            "Type": "Processing",
            "Arguments": without(evaluate, "ProcessingJobName"),
            "PropertyFiles": [property_file],
        },
        gate_step(register),
    ]
    parameters = [
        {"Name": MIN_TOP1, "Type": "Float", "DefaultValue": 0.0},
        {"Name": MAX_ECE, "Type": "Float", "DefaultValue": DEFAULT_MAX_ECE},
    ]
    return with_references(
        {"Version": DEFINITION_VERSION, "Metadata": {}, "Parameters": parameters, "Steps": steps}
    )


def without(params: dict, name: str) -> dict:
    # A step's job gets its name from SageMaker, one per run.
    return {key: value for key, value in params.items() if key != name}


def upload_evaluation_code(aws: Aws, job: JobSpec) -> str:
    """Put evaluation.tar.gz under a key named by its digest; returns its S3 URI."""
    archive = evaluation_archive()
    key = f"{job.prefix.strip('/')}/code/{digest(archive)}/evaluation.tar.gz"
    aws.send(AwsCall("s3", "PutObject", {"Bucket": job.bucket, "Key": key, "Body": archive}))
    return f"s3://{job.bucket}/{key}"


def upsert(aws: Aws, spec: PipelineSpec, log) -> dict:
    """Ship the code, make the package group if it is missing, create or update the pipeline."""
    code_uri = upload_code(aws, spec.job)
    evaluation_code_uri = upload_evaluation_code(aws, spec.job)
    group = AwsCall("sagemaker", "DescribeModelPackageGroup", {"ModelPackageGroupName": spec.package_group})
    if aws.describe(group) is None:
        description = "dog-breed classifiers trained, evaluated and gated by the pipeline"
        aws.send(
            AwsCall(
                "sagemaker",
                "CreateModelPackageGroup",
                {"ModelPackageGroupName": spec.package_group, "ModelPackageGroupDescription": description},
            )
        )
        log(f"created model package group {spec.package_group}")
    body = json.dumps(definition(spec, code_uri, evaluation_code_uri), sort_keys=True)
    params = {"PipelineName": spec.name, "PipelineDefinition": body, "RoleArn": spec.job.role}
    existing = aws.describe(AwsCall("sagemaker", "DescribePipeline", {"PipelineName": spec.name}))
    if existing is None:
        # The same definition sent twice creates one pipeline.
        token = hashlib.sha256(body.encode()).hexdigest()
        aws.send(AwsCall("sagemaker", "CreatePipeline", {**params, "ClientRequestToken": token}))
        log(f"created pipeline {spec.name}")
    else:
        aws.send(AwsCall("sagemaker", "UpdatePipeline", params))
        log(f"updated pipeline {spec.name}")
    return {"pipeline": spec.name, "package_group": spec.package_group, "definition_bytes": len(body)}


def approved_baseline(aws: Aws, package_group: str) -> dict | None:
    """The newest Approved package of the group with its gate figures, or None when there is none."""
    listed = aws.send(
        AwsCall(
            "sagemaker",
            "ListModelPackages",
            {
                "ModelPackageGroupName": package_group,
                "ModelApprovalStatus": APPROVED,
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
                "MaxResults": 1,
            },
        )
    )
    summaries = listed.get("ModelPackageSummaryList", [])
    if not summaries:
        return None
    arn = summaries[0]["ModelPackageArn"]
    package = aws.send(AwsCall("sagemaker", "DescribeModelPackage", {"ModelPackageName": arn}))
    statistics = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
    if "S3Uri" not in statistics:
        # Registered by hand, not by this pipeline: there is nothing to compare a new model with.
        raise ValueError(
            f"the newest approved package {arn} has no model quality statistics to gate against: "
            "register models with this pipeline, or reject that package"
        )
    bucket, key = parse_s3_uri(statistics["S3Uri"])
    body = aws.send(AwsCall("s3", "GetObject", {"Bucket": bucket, "Key": key}))["Body"].read()
    evaluation = json.loads(body)
    return {"package": arn, "version": package.get("ModelPackageVersion"), "metrics": evaluation["metrics"]}


def start(aws: Aws, name: str, package_group: str, margin: float, max_ece: float, log) -> dict:
    """Start a run gated against the newest approved package (top-1 less `margin`), and ECE at most
    `max_ece`; with no approved package yet, only the ECE limit holds."""
    baseline = approved_baseline(aws, package_group)
    min_top1 = max(0.0, baseline["metrics"]["top1"] - margin) if baseline else 0.0
    against = f"package {baseline['package']}" if baseline else "no approved package yet"
    gate = f"top-1 >= {min_top1:.4f} ({against}), ECE <= {max_ece:.4f}"
    started = aws.send(
        AwsCall(
            "sagemaker",
            "StartPipelineExecution",
            {
                "PipelineName": name,
                "PipelineParameters": [
                    {"Name": MIN_TOP1, "Value": str(min_top1)},
                    {"Name": MAX_ECE, "Value": str(max_ece)},
                ],
                "PipelineExecutionDescription": f"gate: {gate}"[:3072],
                "ClientRequestToken": str(uuid.uuid4()),
            },
        )
    )
    log(f"started pipeline {name}; {gate}")
    return {
        "execution": started.get("PipelineExecutionArn", "not started (dry run)"),
        "gate": {"min_top1": min_top1, "max_ece": max_ece, "baseline": baseline},
    }


def step_report(step: dict) -> dict:
    """One step of ListPipelineExecutionSteps: its status, and what it made or why it stopped."""
    metadata = step.get("Metadata", {})
    report = {"step": step["StepName"], "status": step["StepStatus"]}
    if step.get("FailureReason"):
        report["failure_reason"] = step["FailureReason"]
    if "Fail" in metadata:
        report["failure_reason"] = metadata["Fail"].get("ErrorMessage")
    if "RegisterModel" in metadata:
        report["model_package"] = metadata["RegisterModel"]["Arn"]
    if "Condition" in metadata:
        report["gate_passed"] = metadata["Condition"].get("Outcome") == "True"
    return report


def status(aws: Aws, name: str, execution: str | None) -> dict:
    """The execution's status (the newest run's without `execution`) and each step's."""
    if execution is None:
        listed = aws.send(
            AwsCall(
                "sagemaker",
                "ListPipelineExecutions",
                {"PipelineName": name, "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 1},
            )
        )
        runs = listed.get("PipelineExecutionSummaries", [])
        if aws.dry_run:
            runs = [{"PipelineExecutionArn": "<PipelineExecutionArn from ListPipelineExecutions>"}]
        if not runs:
            return {"pipeline": name, "execution": None, "status": "never run", "steps": []}
        execution = runs[0]["PipelineExecutionArn"]
    described = aws.send(
        AwsCall("sagemaker", "DescribePipelineExecution", {"PipelineExecutionArn": execution})
    )
    listed = aws.send(
        AwsCall(
            "sagemaker",
            "ListPipelineExecutionSteps",
            {"PipelineExecutionArn": execution, "SortOrder": "Ascending"},
        )
    )
    return {
        "pipeline": name,
        "execution": execution,
        "status": described.get("PipelineExecutionStatus"),
        "failure_reason": described.get("FailureReason") or None,
        "steps": [step_report(step) for step in listed.get("PipelineExecutionSteps", [])],
    }
