"""What `chalice package` builds for the deployed stages: the template, the role, the zip, checked for real
(the real CLI, cfn-lint, and the wheels chalice picked for the Lambda platform)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = json.loads((PROJECT / ".chalice" / "config.json").read_text())
DEPLOYED_STAGES = ["dev", "prod"]
ALLOWED_ACTIONS = {
    "sagemaker:InvokeEndpoint",
    "sagemaker:DescribeEndpoint",
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
}
# boto3 comes with the Lambda runtime; the rest belongs to training and would break the 250 MB limit.
NEVER_SHIPPED = ("torch", "training", "numpy", "boto3", "botocore", "onnxruntime")


def stage_environment(stage: str) -> dict[str, str]:
    return {
        **CONFIG.get("environment_variables", {}),
        **CONFIG["stages"][stage].get("environment_variables", {}),
    }


@pytest.fixture(scope="module", params=DEPLOYED_STAGES)
def package(request, tmp_path_factory) -> tuple[str, dict, Path]:
    """(stage, template, zip) from `chalice package --stage STAGE`, run on a copy of the project's sources."""
    stage = request.param
    project = tmp_path_factory.mktemp(f"project-{stage}")
    shutil.copy(PROJECT / "app.py", project)
    shutil.copy(PROJECT / "requirements.txt", project)
    shutil.copytree(
        PROJECT / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(PROJECT / ".chalice", project / ".chalice", ignore=shutil.ignore_patterns("deployments"))
    output = project / "out"
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", stage, str(output)],
        cwd=project,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return stage, json.loads((output / "sam.json").read_text()), output / "deployment.zip"


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_every_function_has_reserved_concurrency_memory_and_timeout(package):
    stage, template, _ = package
    functions = resources(template, "AWS::Serverless::Function")
    assert {f["Properties"]["Handler"] for f in functions.values()} == {"app.app", "app.classify"}
    for function in functions.values():
        properties = function["Properties"]
        assert properties["ReservedConcurrentExecutions"] == CONFIG["stages"][stage]["reserved_concurrency"]
        assert properties["MemorySize"] >= 1024
        assert properties["Runtime"] == "python3.11"
    api_handler = next(f for f in functions.values() if f["Properties"]["Handler"] == "app.app")
    # API Gateway gives up after 29 s; a longer Lambda would keep working for nobody.
    assert api_handler["Properties"]["Timeout"] < 29


def test_dev_keeps_the_seeds_concurrency_of_two():
    assert CONFIG["stages"]["dev"]["reserved_concurrency"] == 2


def test_functions_get_the_stage_environment_and_no_local_overrides(package):
    stage, template, _ = package
    for function in resources(template, "AWS::Serverless::Function").values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables["ENDPOINT_NAME"] == f"dogbreeds-{stage}"
        assert variables["ALLOW_LOOPBACK_FETCH"] == "false"
        assert variables["UNSIGNED_ENDPOINT_REQUESTS"] == "false"
        assert "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME" not in variables


@pytest.mark.parametrize("setting", ["ALLOW_LOOPBACK_FETCH", "UNSIGNED_ENDPOINT_REQUESTS"])
def test_only_the_local_stage_relaxes(setting):
    for stage in CONFIG["stages"]:
        assert (stage_environment(stage)[setting] == "true") is (stage == "local")


def test_roles_allow_only_invoking_the_stage_endpoint_and_writing_own_logs(package):
    stage, template, _ = package
    roles = resources(template, "AWS::IAM::Role")
    functions = resources(template, "AWS::Serverless::Function")
    assert len(roles) == len(functions)
    own_log_groups = {f"/aws/lambda/dogbreeds-{stage}", f"/aws/lambda/dogbreeds-{stage}-classify"}
    for role in roles.values():
        properties = role["Properties"]
        assert "ManagedPolicyArns" not in properties
        statements = [s for policy in properties["Policies"] for s in policy["PolicyDocument"]["Statement"]]
        for statement in statements:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            assert set(actions) <= ALLOWED_ACTIONS
            for target in targets:
                if actions in (["sagemaker:InvokeEndpoint"], ["sagemaker:DescribeEndpoint"]):
                    assert target == f"arn:aws:sagemaker:*:*:endpoint/dogbreeds-{stage}"
                else:
                    assert all(a.startswith("logs:") for a in actions)
                    log_group = target.split(":log-group:", 1)[1].removesuffix(":log-stream:*")
                    assert log_group in own_log_groups
        invoke = [s for s in statements if s["Action"] == "sagemaker:InvokeEndpoint"]
        assert len(invoke) == 1


def test_api_gateway_passes_image_uploads_as_binary(package):
    _, template, _ = package
    (api,) = resources(template, "AWS::Serverless::Api").values()
    binary_types = api["Properties"]["DefinitionBody"]["x-amazon-apigateway-binary-media-types"]
    assert {"image/jpeg", "image/png", "image/webp", "application/octet-stream"} <= set(binary_types)
    assert "application/json" not in binary_types


def test_template_passes_cfn_lint(package):
    _, template, bundle = package
    path = bundle.parent / "sam.json"
    result = subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zip_holds_the_manylinux_pillow_and_nothing_heavy(package):
    _, _, bundle = package
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        wheels = {
            name.split("/")[0]: archive.read(name).decode()
            for name in names
            if name.endswith(".dist-info/WHEEL")
        }
    tops = {name.split("/")[0] for name in names}
    assert {"app.py", "chalicelib", "PIL", "requests"} <= tops
    # The web page at / is read from these files at run time.
    assert {f"chalicelib/static/{name}" for name in ("index.html", "page.css", "page.js")} <= set(names)
    assert not tops & set(NEVER_SHIPPED), tops & set(NEVER_SHIPPED)
    pillow = wheels["pillow-12.2.0.dist-info"]
    # A Pillow that chalice compiled here would be tagged linux_x86_64 and link this machine's libraries.
    assert "Tag: cp311-cp311-manylinux2014_x86_64" in pillow
    assert any(name.startswith("pillow.libs/") for name in names)  # the libraries auditwheel bundled
    for name, wheel in wheels.items():
        tags = [line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
        assert all(tag.endswith("-any") or "manylinux" in tag for tag in tags), (name, tags)
    assert bundle.stat().st_size < 50 * 1024 * 1024  # Lambda's limit for a directly uploaded zip


def test_api_side_imports_neither_torch_nor_training():
    code = (
        "import sys, app\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'training', 'numpy', 'onnxruntime'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
