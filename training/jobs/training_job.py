"""CreateTrainingJob and CreateHyperParameterTuningJob requests for training/train.py on the PyTorch image.

Multi-instance training, as SageMaker Python SDK v3 allows it (`sagemaker.core.fw_utils`):
- GPU (ml.g*, ml.p*) and Trainium: `torch_distributed`, i.e. the PyTorch container launches the script with
  torchrun on every host (`sagemaker_torch_distributed_enabled`), one process per GPU.
- CPU (ml.m5, ml.c5, ...): the SDK rejects torch_distributed ("supported only for GPU and Trainium
  instances"), so the container starts the script once per host and the script joins the hosts itself
  from SM_HOSTS and SM_CURRENT_HOST (gloo). `--distribution auto` picks the one the instance type allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sagemaker.core import image_uris, shapes
from sagemaker.core.fw_utils import _is_gpu_instance, validate_torch_distributed_distribution
from sagemaker.core.utils.utils import serialize

from training.jobs.calls import AwsCall
from training.jobs.source_bundle import TRAIN_ENTRY

# The newest PyTorch the SDK knows both training and inference images of (resolved offline).
FRAMEWORK_VERSION = "2.6.0"
PY_VERSION = "py312"
CHANNELS = ("train", "valid")
OBJECTIVE_METRIC = "valid_accuracy"
# training/train.py prints `valid_accuracy=0.9123;` after every epoch; SageMaker reads it from the log.
METRIC_DEFINITIONS = [shapes.MetricDefinition(name=OBJECTIVE_METRIC, regex=r"valid_accuracy=([0-9\.]+);")]
DISTRIBUTIONS = ("auto", "torchrun", "hosts")
# What the tuner may choose among: each Lite alone, and all three side by side (training/train.py's default,
# spelled the same; a test keeps them equal without this module importing torch).
BACKBONES = (
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2",
)


class DistributionError(ValueError):
    """The requested distribution does not fit the instance type (the SDK's own check says why)."""


@dataclass(frozen=True)
class JobSpec:
    """What every training job of this project shares, tuned or not."""

    region: str
    role: str
    bucket: str
    prefix: str
    data_prefix: str
    instance_type: str
    instance_count: int
    distribution: str = "auto"
    volume_gb: int = 30
    max_runtime_s: int = 24 * 3600

    @property
    def image_uri(self) -> str:
        return training_image(self.region, self.instance_type)

    def s3(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", self.prefix.strip("/"), *parts])


def training_image(region: str, instance_type: str) -> str:
    """The SageMaker PyTorch training image for the instance type's processor (CPU or GPU)."""
    return image_uris.retrieve(
        "pytorch",
        region=region,
        version=FRAMEWORK_VERSION,
        py_version=PY_VERSION,
        instance_type=instance_type,
        image_scope="training",
    )


def uses_torchrun(spec: JobSpec) -> bool:
    """Whether the container should launch the script with torchrun (see the module docstring).

    Raises DistributionError when torchrun is asked for on an instance type the SDK does not allow it on.
    """
    wanted = spec.distribution
    if wanted not in DISTRIBUTIONS:
        raise DistributionError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {wanted!r}")
    if wanted == "hosts" or (wanted == "auto" and not _is_gpu_instance(spec.instance_type)):
        return False
    try:
        validate_torch_distributed_distribution(
            instance_type=spec.instance_type,
            distribution={"torch_distributed": {"enabled": True}},
            framework_version=FRAMEWORK_VERSION,
            py_version=PY_VERSION,
            image_uri=None,
            entry_point=TRAIN_ENTRY,
        )
    except ValueError as error:
        message = " ".join(str(error).split())
        raise DistributionError(f"torchrun on {spec.instance_type}: {message}") from None
    return True


def script_mode_hyperparameters(spec: JobSpec, job_name: str, code_uri: str) -> dict[str, str]:
    """What tells the PyTorch training toolkit which script to run from where (JSON-encoded values)."""
    values: dict[str, object] = {
        "sagemaker_program": TRAIN_ENTRY,
        "sagemaker_submit_directory": code_uri,
        "sagemaker_region": spec.region,
        "sagemaker_job_name": job_name,
        "sagemaker_container_log_level": 20,
    }
    if uses_torchrun(spec):
        # As SDK v2's PyTorch estimator sent them; the toolkit reads the instance type to count GPUs per host.
        values["sagemaker_torch_distributed_enabled"] = True
        values["sagemaker_instance_type"] = spec.instance_type
    return {key: json.dumps(value) for key, value in values.items()}


def input_channels(spec: JobSpec) -> list[shapes.Channel]:
    """train and valid from `s3://bucket/data_prefix/{train,valid}/`, where `upload-data` puts them."""
    return [
        shapes.Channel(
            channel_name=name,
            data_source=shapes.DataSource(
                s3_data_source=shapes.S3DataSource(
                    s3_data_type="S3Prefix",
                    s3_uri=f"s3://{spec.bucket}/{spec.data_prefix.strip('/')}/{name}/",
                    s3_data_distribution_type="FullyReplicated",
                )
            ),
            input_mode="File",
        )
        for name in CHANNELS
    ]


def training_job_request(
    spec: JobSpec, job_name: str, code_uri: str, hyperparameters: dict[str, str]
) -> AwsCall:
    """CreateTrainingJob for training/train.py; `hyperparameters` become its command-line flags."""
    params = {
        "TrainingJobName": job_name,
        "RoleArn": spec.role,
        "AlgorithmSpecification": shapes.AlgorithmSpecification(
            training_image=spec.image_uri,
            training_input_mode="File",
            metric_definitions=METRIC_DEFINITIONS,
        ),
        "HyperParameters": {**hyperparameters, **script_mode_hyperparameters(spec, job_name, code_uri)},
        "InputDataConfig": input_channels(spec),
        "OutputDataConfig": shapes.OutputDataConfig(s3_output_path=spec.s3("output")),
        "ResourceConfig": shapes.ResourceConfig(
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            volume_size_in_gb=spec.volume_gb,
        ),
        "StoppingCondition": shapes.StoppingCondition(max_runtime_in_seconds=spec.max_runtime_s),
    }
    return AwsCall("sagemaker", "CreateTrainingJob", serialize(params))


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameter ranges of `tune`, named as training/train.py's flags."""

    lr: tuple[float, float] = (1e-4, 3e-2)
    batch_size: tuple[int, ...] = (32, 64, 128)
    epochs: tuple[int, int] = (3, 15)
    backbones: tuple[str, ...] = BACKBONES

    def ranges(self) -> shapes.ParameterRanges:
        return shapes.ParameterRanges(
            continuous_parameter_ranges=[
                shapes.ContinuousParameterRange(
                    name="lr",
                    min_value=str(self.lr[0]),
                    max_value=str(self.lr[1]),
                    scaling_type="Logarithmic",
                )
            ],
            integer_parameter_ranges=[
                shapes.IntegerParameterRange(
                    name="epochs",
                    min_value=str(self.epochs[0]),
                    max_value=str(self.epochs[1]),
                    scaling_type="Linear",
                )
            ],
            categorical_parameter_ranges=[
                shapes.CategoricalParameterRange(
                    name="batch-size", values=[str(size) for size in self.batch_size]
                ),
                shapes.CategoricalParameterRange(name="backbone", values=list(self.backbones)),
            ],
        )


def tuning_job_request(
    spec: JobSpec,
    tuning_name: str,
    code_uri: str,
    space: SearchSpace,
    max_jobs: int,
    max_parallel: int,
    static_hyperparameters: dict[str, str],
) -> AwsCall:
    """CreateHyperParameterTuningJob: Bayesian search maximising valid_accuracy read from the training log."""
    definition = shapes.HyperParameterTrainingJobDefinition(
        static_hyper_parameters={
            **static_hyperparameters,
            **script_mode_hyperparameters(spec, tuning_name, code_uri),
        },
        algorithm_specification=shapes.HyperParameterAlgorithmSpecification(
            training_image=spec.image_uri, training_input_mode="File", metric_definitions=METRIC_DEFINITIONS
        ),
        role_arn=spec.role,
        input_data_config=input_channels(spec),
        output_data_config=shapes.OutputDataConfig(s3_output_path=spec.s3("output")),
        resource_config=shapes.ResourceConfig(
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            volume_size_in_gb=spec.volume_gb,
        ),
        stopping_condition=shapes.StoppingCondition(max_runtime_in_seconds=spec.max_runtime_s),
    )
    config = shapes.HyperParameterTuningJobConfig(
        strategy="Bayesian",
        hyper_parameter_tuning_job_objective=shapes.HyperParameterTuningJobObjective(
            type="Maximize", metric_name=OBJECTIVE_METRIC
        ),
        resource_limits=shapes.ResourceLimits(
            max_number_of_training_jobs=max_jobs, max_parallel_training_jobs=max_parallel
        ),
        parameter_ranges=space.ranges(),
        training_job_early_stopping_type="Auto",
    )
    params = {
        "HyperParameterTuningJobName": tuning_name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
    }
    return AwsCall("sagemaker", "CreateHyperParameterTuningJob", serialize(params))
