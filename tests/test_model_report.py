"""docs/models.md's tables, rendered from the model folders' committed records (training.model_report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT

from classifier.model import CONFIG_FILE, QUANTIZATION_FILE
from training import model_report, pets
from training.fit_dog import RESULT_FILE as PETS_FILE

DOC = PROJECT / "docs" / "models.md"
MODEL_DIRS = ["models/default", "models/fast"]
RECORDS = [CONFIG_FILE, "weights.pt", "metrics.json", "evaluation-valid.json", QUANTIZATION_FILE, PETS_FILE]


def report(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.model_report", *argv],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def committed_models() -> list[model_report.Model]:
    return [model_report.read_model(PROJECT / path) for path in MODEL_DIRS]


def copy_model(source: str, target) -> None:
    target.mkdir(parents=True)
    for name in RECORDS:
        shutil.copy(PROJECT / source / name, target / name)


def test_the_docs_blocks_are_what_the_committed_records_render_to():
    check = report("--check", "--docs", "docs/models.md", *MODEL_DIRS)
    assert check.returncode == 0, check.stderr


def test_a_figure_edited_by_hand_fails_the_check(tmp_path):
    doc = tmp_path / "models.md"
    top1 = model_report.pct(json.loads((PROJECT / "models/fast/evaluation-valid.json").read_text())["top1"])
    doc.write_text(DOC.read_text().replace(top1, "99.99%"))
    assert doc.read_text() != DOC.read_text()
    check = report("--check", "--docs", str(doc), *MODEL_DIRS)
    assert check.returncode == 1 and "training.model_report" in check.stderr
    assert report("--docs", str(doc), *MODEL_DIRS).returncode == 0
    assert doc.read_text() == DOC.read_text()


def test_every_block_needs_its_markers():
    models = committed_models()
    with pytest.raises(ValueError, match="missing: .*int8-fast"):
        model_report.render(DOC.read_text().replace("<!-- model:int8-fast -->", ""), models)
    with pytest.raises(ValueError, match="unknown: nope"):
        model_report.render(DOC.read_text() + "\n<!-- model:nope -->\n<!-- /model:nope -->\n", models)


def test_the_pets_block_is_the_fit_dog_records_table():
    models = committed_models()
    table = pets.render_table([json.loads((PROJECT / path / PETS_FILE).read_text()) for path in MODEL_DIRS])
    assert model_report.blocks(models)["pets-heldout"][0] == table
    assert table in DOC.read_text()


def test_a_quantization_record_of_other_weights_is_rendered_stale(tmp_path):
    model_dir = tmp_path / "fast"
    copy_model("models/fast", model_dir)
    record = json.loads((model_dir / QUANTIZATION_FILE).read_text())
    record["default"], record["source_digest"] = True, model_report.read_model(model_dir).digest
    (model_dir / QUANTIZATION_FILE).write_text(json.dumps(record))
    current = "\n".join(model_report.int8_block(model_report.read_model(model_dir)))
    assert "stale" not in current.lower() and "default runtime: **yes**" in current

    record["source_digest"] = "0123456789abcdef"
    (model_dir / QUANTIZATION_FILE).write_text(json.dumps(record))
    stale = "\n".join(model_report.int8_block(model_report.read_model(model_dir)))
    assert stale.startswith("**Stale: these figures are not the committed")
    assert "measured on source digest 0123456789abcdef" in stale
    assert "default runtime: **no**" in stale


def test_retrained_weights_make_the_committed_record_stale(tmp_path):
    model_dir = tmp_path / "fast"
    copy_model("models/fast", model_dir)
    before = model_report.read_model(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["calibration"]["breed_temperature"] += 0.01
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    after = model_report.read_model(model_dir)
    assert after.digest != before.digest
    stale_record = after.quantization["source_digest"] != after.digest
    assert ("Stale" in "\n".join(model_report.int8_block(after))) == stale_record
    # The evaluation record was made with the calibration config.json held then.
    assert "another calibration than config.json's" in "\n".join(model_report.models_block([after]))


def test_a_missing_record_drops_its_rows(tmp_path):
    model_dir = tmp_path / "bare"
    copy_model("models/fast", model_dir)
    for name in ("evaluation-valid.json", QUANTIZATION_FILE):
        (model_dir / name).unlink()
    model = model_report.read_model(model_dir)
    table = "\n".join(model_report.models_block([model]))
    assert "valid top-1" not in table and "no evaluation-valid.json" in table
    assert "has no quantization-valid.json" in model_report.int8_block(model)[0]


@pytest.mark.parametrize("model", committed_models(), ids=lambda model: model.folder)
def test_the_committed_evaluation_was_measured_on_the_committed_weights(model):
    """The accuracy docs/models.md states is the served model's: evaluate again after any change."""
    assert model.evaluation is not None
    assert model.evaluation.get("source_digest") == model.digest, (
        f"{model.path}/evaluation-valid.json was measured on other weights: make evaluate "
        "EVALUATE_FLAGS=--write-model-dir"
    )
