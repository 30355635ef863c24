"""The benchmark results (bench/results/) and the docs' tables rendered from them (bench.render)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import PROJECT

from bench import render, results
from classifier.cpu import INT8_FEATURES
from classifier.graph import source_digest

COMMITTED = results.all_results()
REPEATS = results.all_results(results.RESULTS_DIR / render.REPEAT_DIR)
# Every committed result, the second runs too, by the file name they render from.
EVERY = {**COMMITTED, **{f"{render.REPEAT_DIR}/{name}": result for name, result in REPEATS.items()}}


def run_bench(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", *argv], cwd=PROJECT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result


def test_there_are_committed_results():
    assert {"endpoint_speed-fast", "startup", "cold_import"} <= set(COMMITTED)


def test_the_docs_tables_are_what_the_committed_results_render_to():
    doc = render.DOC.read_text()
    assert render.render(doc, COMMITTED, REPEATS) == doc, (
        "docs/benchmarks.md is out of date: run python -m bench.render"
    )


@pytest.mark.parametrize("name", sorted(EVERY))
def test_a_committed_result_was_measured_on_the_committed_models(name):
    measured = [model for model in EVERY[name]["provenance"]["models"] if model["path"].startswith("models/")]
    for model in measured:
        assert model["source_digest"] == source_digest(PROJECT / model["path"]), (
            f"{name}: measured on other weights than {model['path']}'s: measure it again"
        )


@pytest.mark.parametrize("name", sorted(EVERY))
def test_a_committed_result_says_what_it_holds_for(name):
    run = EVERY[name]["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]) and isinstance(run["dirty"], bool)
    assert run["command"].startswith(f"python -m bench.{EVERY[name]['bench'].split('-')[0]}")
    assert run["cpu"]["model"] and run["cpu"]["cores"] >= 1
    assert set(run["cpu"]["flags"]) == set(INT8_FEATURES)
    assert len(run["load_before"]) == len(run["load_after"]) == 3
    assert run["started"] <= run["finished"]
    assert EVERY[name]["tables"] and all(table["rows"] for table in EVERY[name]["tables"])


def test_a_table_edited_by_hand_fails_the_check(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(render.DOC.read_text())
    run_bench("bench.render", "--check", "--doc", str(doc))
    name = "endpoint_speed-fast"
    start = doc.read_text().index(f"<!-- bench:{name} -->")
    edited = re.sub(r"\| \d+\.\d+", "| 1.0", doc.read_text()[start:], count=1)
    assert edited != doc.read_text()[start:]
    doc.write_text(doc.read_text()[:start] + edited)
    check = subprocess.run(
        [sys.executable, "-m", "bench.render", "--check", "--doc", str(doc)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and "run python -m bench.render" in check.stderr
    run_bench("bench.render", "--doc", str(doc))
    assert doc.read_text() == render.DOC.read_text()


def test_a_second_run_shows_beside_the_first_where_they_differ():
    first = COMMITTED["cold_import"]
    second = json.loads(json.dumps(first))
    second["tables"][0]["rows"][0][1] = "123456.7"
    second["provenance"]["started"] = "2030-01-01T00:00:00+00:00"
    second["tables"][0]["title"] = "a title that holds a figure: 9.9x"
    text = render.render(
        "<!-- bench:cold_import -->\n<!-- /bench:cold_import -->\n", COMMITTED, {"cold_import": second}
    )
    cell = first["tables"][0]["rows"][0][1]
    assert f"| {cell} / 123456.7 |" in text and "where two runs differ: first / second" in text
    assert f"**{first['tables'][0]['title']} (second run: a title that holds a figure: 9.9x)" in text
    unchanged = first["tables"][0]["rows"][-1][-1]
    assert f"{unchanged} / {unchanged}" not in text
    assert (
        "Second run: From `bench/results/repeat/cold_import.json`" in text and "2030-01-01 00:00:00" in text
    )


def test_a_block_without_its_result_is_an_error():
    with pytest.raises(KeyError, match="no-such-bench"):
        render.render("<!-- bench:no-such-bench -->\n<!-- /bench:no-such-bench -->\n", COMMITTED)


def test_a_real_run_writes_its_result_and_renders_into_a_new_doc(tmp_path):
    """bench.cold_import with one run of each kind (fresh interpreters importing the API): seconds."""
    output = run_bench("bench.cold_import", "--runs", "1", "--results-dir", str(tmp_path), timeout=120).stdout
    assert "compiled from source, as on Lambda, median of 1 fresh interpreters (ms):" in output  # as before
    result = json.loads((tmp_path / "cold_import.json").read_text())
    run = result["provenance"]
    assert run["command"] == "python -m bench.cold_import --runs 1"  # where it wrote is not what it measured
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert run["commit"] == head.stdout.strip()
    assert run["cpu"]["cores"] >= 1 and run["models"] == []
    baseline = result["figures"]["from_source_ms"]["baseline"]
    assert baseline > 0
    assert result["tables"][0]["rows"][0][1] == f"{baseline:.1f}"  # the table shows the figures

    doc = tmp_path / "doc.md"
    run_bench("bench.render", "--doc", str(doc), "--results-dir", str(tmp_path))
    text = doc.read_text()
    assert "<!-- bench:cold_import -->" in text and "<!-- /bench:cold_import -->" in text
    assert f"| API without observability (baseline) | {baseline:.1f} |" in text
    assert f"at commit {run['commit'][:10]}" in text
    run_bench("bench.render", "--check", "--doc", str(doc), "--results-dir", str(tmp_path))


def test_the_recorded_command_leaves_out_where_the_result_went():
    argv = ["--runs", "1", "--results-dir", "/tmp/x", "--results-dir=/tmp/y", "models/fast"]
    assert results.measuring_arguments(argv) == ["--runs", "1", "models/fast"]


@pytest.mark.slow
def test_an_endpoint_run_records_the_models_digest_and_runtime(tmp_path):
    run_bench(
        "bench.endpoint_speed", "--model-dir", "models/fast", "--seconds", "0.3", "--runs", "5",
        "--rounds", "1", "--results-dir", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "endpoint_speed-fast.json").read_text())
    assert result["provenance"]["models"] == [
        {"path": "models/fast", "source_digest": source_digest(PROJECT / "models" / "fast")}
    ]
    assert (
        result["provenance"]["runtime"].startswith("onnxruntime") and result["provenance"]["device"] == "cpu"
    )
    endpoint = result["figures"]["latency"]["endpoint, whole request (HTTP + decode + model)"]
    assert endpoint["calls"] == 5 and endpoint["p50_ms"] > 0
    assert ["endpoint, whole request (HTTP + decode + model)", f"{endpoint['p50_ms']:.1f}"] == result[
        "tables"
    ][0]["rows"][-1][:2]
