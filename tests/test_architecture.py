"""The packages' layering (docs/architecture.md): who may import whom, and no import circles.

Every import statement counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PROJECT

PACKAGES = ("app", "chalicelib", "classifier", "serving", "training", "clients", "bench", "scripts", "tests")
# Floor -> the modules (or packages) its modules may import besides its own. bench/ and scripts/ are the top
# floor and may use anything; tests are not listed: they test every floor.
ALLOWED = {
    "chalicelib": set(),  # ships alone in the Lambda zip
    "app": {"chalicelib"},
    "classifier": set(),  # the model artifact: the floor everything else stands on
    "serving": {"classifier"},
    "training": {"classifier"},
    # The SageMaker launchers deploy the endpoint and read Batch Transform's answers: they speak the
    # endpoint's wire contract and the batch command's results format, but never import the endpoint itself.
    "training.jobs": {"classifier", "training", "serving.contract", "clients.batch_results"},
    # The batch command speaks the wire contracts of the endpoint and the API; for the endpoint it converts
    # what only the API decodes (HEIC, AVIF) with the API's own preparation and its errors.
    "clients": {"serving.contract", "chalicelib.settings", "chalicelib.image", "chalicelib.errors"},
}


def project_modules() -> dict[str, Path]:
    modules = {"app": PROJECT / "app.py"}
    for package in PACKAGES[1:]:
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = project_modules()


def imports_of(path: Path) -> set[str]:
    """The project modules `path` imports, resolved to the modules that exist (`from a import b` names the
    module a.b when there is one, else a)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {module: imports_of(path) - {module} for module, path in MODULES.items()}


def package_of(module: str) -> str:
    return module.split(".")[0]


def floor_of(module: str) -> str:
    """The most specific floor of ALLOWED that holds `module` (training.jobs.deploy -> training.jobs)."""
    return max((floor for floor in ALLOWED if within(module, floor)), key=len, default=package_of(module))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("floor", sorted(ALLOWED))
def test_each_floor_imports_only_what_stands_beneath_it(floor):
    strays = {
        f"{module} -> {imported}"
        for module, imported_modules in GRAPH.items()
        if floor_of(module) == floor
        for imported in imported_modules
        if not within(imported, floor) and not any(within(imported, allowed) for allowed in ALLOWED[floor])
    }
    assert not strays


def test_no_import_circles():
    """Tarjan's strongly connected components over the module graph: any component of two or more modules
    is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in GRAPH[module]:
            # A package's __init__ is not an edge to each of its modules; `from pkg import mod` names mod.
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(component)

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles


def test_the_layering_test_sees_real_imports():
    """The graph is read from the code: serving's handlers stand on the classifier's runtime."""
    assert "classifier.runtime" in GRAPH["serving.inference"]
    assert "classifier.model" in GRAPH["training.train"] or "classifier.model" in GRAPH["training.session"]


# Exactly what each SageMaker container ships (training/jobs/source_bundle.py follows the imports from its
# entry). A module that starts riding along, or one the entry needs that goes missing, fails here.
ENDPOINT_ARCHIVE = {
    "inference.py",
    "requirements.txt",
    "serving/__init__.py",
    "serving/contract.py",
    "serving/identity.py",
    "serving/inference.py",
    "classifier/__init__.py",
    "classifier/cpu.py",
    "classifier/graph.py",
    "classifier/model.py",
    "classifier/preprocessing.py",
    "classifier/runtime.py",
}
TRAINING_ARCHIVE = {
    "sagemaker_train.py",
    "requirements.txt",
    *(f"training/{name}.py" for name in ("__init__", "calibration_stats", "crossval", "data", "evaluate")),
    *(f"training/{name}.py" for name in ("features", "head", "nondogs", "options", "session", "train")),
    *(f"classifier/{name}.py" for name in ("__init__", "checked_graph", "cpu", "graph", "logs", "model")),
    *(f"classifier/{name}.py" for name in ("preprocessing", "runtime")),
}


def test_the_endpoint_archive_ships_the_handlers_and_the_model_package_only():
    from training.jobs.source_bundle import inference_files

    assert set(inference_files()) == ENDPOINT_ARCHIVE


def test_the_training_archive_ships_training_and_the_model_package_only():
    from training.jobs.source_bundle import training_files

    assert set(training_files()) == TRAINING_ARCHIVE


TESTS = PROJECT / "tests"
TEST_MODULES = {path.stem for path in TESTS.glob("test_*.py")}


def imported_test_modules(source: str) -> set[str]:
    """The test modules (tests/test_*.py) that `source` imports, however it names them."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}".lstrip(".") for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.removeprefix("tests.").split(".")
            if parts[0] in TEST_MODULES:
                found.add(parts[0])
    return found


def test_no_module_of_the_tests_imports_a_test_module():
    """Shared fixtures live in conftest.py, shared helpers in the helper modules beside it (local_servers.py,
    api_calls.py, ...). A test module imported by another brings its autouse fixtures along and makes a
    second place to look for a fixture."""
    strays = {
        f"{path.name} -> {imported}"
        for path in sorted(TESTS.glob("*.py"))
        for imported in imported_test_modules(path.read_text())
    }
    assert not strays


@pytest.mark.parametrize(
    "source",
    [
        "from test_api import client",
        "import test_image",
        "import test_image as pictures",
        "from tests.test_jobs import aws",
        "from tests import test_jobs",
        "from . import test_jobs",
        "def f():\n    from test_api import post_image",
    ],
    ids=["from", "import", "import-as", "from-package-module", "from-package", "relative", "in-a-function"],
)
def test_the_test_import_check_sees_every_way_of_naming_a_test_module(source):
    assert imported_test_modules(source)


def test_the_test_import_check_lets_conftest_and_the_helpers_be_imported():
    assert not imported_test_modules("from conftest import PROJECT\nimport local_servers\nimport testing")
