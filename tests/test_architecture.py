"""The packages' layering (docs/architecture.md): who may import whom, and no import circles.

Every import statement counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PROJECT

PACKAGES = ("app", "chalicelib", "classifier", "serving", "training", "clients", "bench", "scripts", "tests")
# Package -> the project packages its modules may import (besides its own). bench/ and scripts/ are the top
# floor and may use anything; tests are not listed: they test every floor.
ALLOWED = {
    "chalicelib": set(),  # ships alone in the Lambda zip
    "app": {"chalicelib"},
    "classifier": set(),  # the model artifact: the floor everything else stands on
    "serving": {"classifier"},
    "training": {"classifier", "clients"},  # jobs/batch_transform writes the batch command's results format
    "clients": {"serving", "chalicelib"},  # only the wire contracts: serving.contract, chalicelib.settings
}
# What the clients may take from the packages beneath them: the contracts, not the endpoint or the Lambda.
CLIENT_CONTRACTS = {"serving.contract", "chalicelib.settings"}


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


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_floors_beneath_it(package):
    strays = {
        f"{module} -> {imported}"
        for module, imported_modules in GRAPH.items()
        if package_of(module) == package
        for imported in imported_modules
        if package_of(imported) != package and package_of(imported) not in ALLOWED[package]
    }
    assert not strays


def test_clients_use_only_the_wire_contracts_beneath_them():
    strays = {
        f"{module} -> {imported}"
        for module, imported_modules in GRAPH.items()
        if package_of(module) == "clients"
        for imported in imported_modules
        if package_of(imported) in ("serving", "chalicelib") and imported not in CLIENT_CONTRACTS
    }
    assert not strays


def test_training_never_imports_the_endpoint_and_serving_never_imports_training():
    for module, imported_modules in GRAPH.items():
        if package_of(module) == "training":
            assert not {m for m in imported_modules if package_of(m) == "serving"}, module
        if package_of(module) == "serving":
            assert not {m for m in imported_modules if package_of(m) == "training"}, module


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
