"""The model figures in docs/models.md, rendered from the records committed in each model folder.

    python -m training.model_report --docs docs/models.md models/default models/fast [--check]

Each block goes between `<!-- model:NAME -->` and `<!-- /model:NAME -->` in the page: `models` (what each
model is and its valid accuracy), `calibration`, `folds` (the recipe's cross-validation), `int8-FOLDER` (one
per model: its quantization record) and `pets-heldout` (the dog head on held-out pet photos). Only the records
are read (config.json, metrics.json, evaluation-valid.json, quantization-valid.json, pets-heldout.json, the
size of weights.pt), and the committed model's source digest (classifier.graph.source_digest) is computed to
say whether a record that names the digest it was measured on still holds for the committed weights. Each
block ends with a line naming its files and digests. Without `--docs` the blocks are printed; `--check`
changes nothing and exits 1 when the page is not what the records render to.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from classifier.graph import source_digest
from classifier.model import CONFIG_FILE, METRICS_FILE, QUANTIZATION_FILE, WEIGHTS_FILE
from training.fit_dog import RESULT_FILE as PETS_FILE
from training.pets import render_table as pets_table

EVALUATION_FILE = "evaluation-valid.json"
BLOCK = re.compile(r"<!-- model:(?P<name>[\w.-]+) -->\n.*?<!-- /model:(?P=name) -->", re.DOTALL)
COMMAND = "python -m training.model_report --docs docs/models.md"


@dataclass
class Model:
    """One model folder's committed records (None where a record is missing)."""

    path: str
    digest: str
    weights_bytes: int
    config: dict
    metrics: dict | None
    evaluation: dict | None
    quantization: dict | None
    pets: dict | None

    @property
    def folder(self) -> str:
        return Path(self.path).name


def read_record(model_dir: Path, name: str) -> dict | None:
    path = model_dir / name
    return json.loads(path.read_text()) if path.exists() else None


def read_model(model_dir: Path) -> Model:
    return Model(
        path=model_dir.as_posix(),
        digest=source_digest(model_dir),
        weights_bytes=(model_dir / WEIGHTS_FILE).stat().st_size,
        config=json.loads((model_dir / CONFIG_FILE).read_text()),
        metrics=read_record(model_dir, METRICS_FILE),
        evaluation=read_record(model_dir, EVALUATION_FILE),
        quantization=read_record(model_dir, QUANTIZATION_FILE),
        pets=read_record(model_dir, PETS_FILE),
    )


def pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


def count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def pct1(value: float) -> str:
    return pct(value, 1)


def before_after(pair: tuple[float, float] | None, fmt) -> str:
    return "" if pair is None else f"{fmt(pair[0])} -> {fmt(pair[1])}"


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; a row whose cells after the first are all empty is left out (no record holds it)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if any(cell for cell in row[1:]):
            lines.append("| " + " | ".join(cell or " " for cell in row) + " |")
    return lines


def digest_note(record: dict, model: Model, name: str) -> str:
    """Whether the weights the record `name` was measured on are the committed ones."""
    measured = record.get("source_digest")
    if measured is None:
        return f"{name} holds no source digest of its own"
    if measured == model.digest:
        return f"{name} was measured on that digest"
    return f"**{name} is stale: measured on source digest {measured}**, not on the committed weights"


def source_line(models: list[Model], files: list[str], notes: dict[str, str] | None = None) -> str:
    """The block's last line: the files it comes from, each model's source digest and notes on its records."""
    notes = notes or {}
    parts = []
    for model in models:
        note = f"; {notes[model.path]}" if notes.get(model.path) else ""
        parts.append(f"`{model.path}/` {', '.join(files)} (source digest {model.digest}{note})")
    return "From " + "; ".join(parts) + "."


def model_cell(model: Model) -> str:
    return f"`{model.path}` ({model.config['name']} {model.config['version']})"


def backbones(config: dict) -> str:
    names = config["backbone"].split(",")
    sizes = config.get("member_image_sizes") or [config["preprocessing"]["image_size"]] * len(names)
    return ", ".join(f"{name} at {size} px" for name, size in zip(names, sizes, strict=True))


def evaluation_value(model: Model, *keys: str) -> float | None:
    value = model.evaluation
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def models_block(models: list[Model]) -> list[str]:
    def ece(model: Model):
        calibration = evaluation_value(model, "calibration") or {}
        if "uncalibrated" not in calibration:
            return ""
        return before_after((calibration["uncalibrated"]["ece"], calibration["calibrated"]["ece"]), pct1)

    rows = [
        ["backbones (ImageNet weights, frozen)", *(backbones(m.config) for m in models)],
        ["dog head", *("yes" if m.config.get("dog_head") else "no" for m in models)],
        [
            "test-time flip (the photo and its mirror image)",
            *(yesno(m.config["test_time_flip"]) for m in models),
        ],
        ["valid images", *(count(evaluation_value(m, "images")) for m in models)],
        ["valid top-1 / top-5", *(f"**{top1_top5(m)}**" if m.evaluation else "" for m in models)],
        ["valid top-1, one view / with the mirror", *(views(m) for m in models)],
        ["trained weights (`weights.pt`)", *(f"{m.weights_bytes / 1e6:.1f} MB" for m in models)],
        ["calibration error (ECE, 15 bins), before -> after", *(ece(m) for m in models)],
    ]
    lines = table(["", *(model_cell(m) for m in models)], rows)
    notes = {m.path: evaluation_note(m) for m in models}
    return [*lines, "", source_line(models, [CONFIG_FILE, EVALUATION_FILE, WEIGHTS_FILE], notes)]


def yesno(flag: bool) -> str:
    return "yes" if flag else "no"


def top1_top5(model: Model) -> str:
    return f"{pct(model.evaluation['top1'])} / {pct(model.evaluation['top5'])}"


def views(model: Model) -> str:
    one, flip = evaluation_value(model, "top1_single_view"), evaluation_value(model, "top1_flip_tta")
    return "" if one is None or flip is None else f"{pct(one)} / {pct(flip)}"


def evaluation_note(model: Model) -> str:
    """The evaluation record's digest note, and whether it was made with config.json's calibration."""
    if model.evaluation is None:
        return f"no {EVALUATION_FILE}"
    settings = evaluation_value(model, "calibration", "settings")
    same = settings == model.config.get("calibration")
    return f"{digest_note(model.evaluation, model, EVALUATION_FILE)}, evaluated with " + (
        "config.json's calibration" if same else "**another calibration than config.json's**"
    )


def calibration_rows(model: Model) -> list[str]:
    """One model's column of the calibration table."""
    calibration = evaluation_value(model, "calibration") or {}
    before, after = calibration.get("uncalibrated"), calibration.get("calibrated")
    settings = model.config.get("calibration") or {}
    out_of_fold = ((model.metrics or {}).get("calibration") or {}).get("out_of_fold_confident")
    confident = calibration.get("confident")

    def pair(key: str, fmt) -> str:
        return before_after((before[key], after[key]), fmt) if before and after else ""

    def share(record: dict | None) -> str:
        return f"{pct(record['coverage'], 1)} / {pct(record['precision'], 1)}" if record else ""

    top1 = f" ({pct(model.evaluation['top1'], 1)})" if model.evaluation and after else ""
    return [
        f"**{pair('ece', pct1)}**" if before else "",
        pair("nll", "{:.3f}".format),
        pair("mean_top1_probability", "{:.2f}".format) + top1,
        f"{settings['breed_temperature']:.3f}" if settings else "",
        f"{settings['confidence_threshold']:.3f} ({pct(settings['confident_precision'], 0)})"
        if settings
        else "",
        share(out_of_fold),
        f"**{share(confident)}**" if confident else "",
    ]


def calibration_block(models: list[Model]) -> list[str]:
    names = [
        "expected calibration error (15 bins), before -> after",
        "negative log-likelihood, before -> after",
        "mean top-1 probability, before -> after (top-1 accuracy)",
        "temperature",
        "confidence threshold (the precision it is set for, out of fold)",
        "out of fold: share confident / their top-1",
        "`valid`: share confident / their top-1",
    ]
    columns = [calibration_rows(model) for model in models]
    rows = [[name, *(column[index] for column in columns)] for index, name in enumerate(names)]
    lines = table(["on `valid`", *(model_cell(m) for m in models)], rows)
    notes = {m.path: evaluation_note(m) for m in models}
    return [*lines, "", source_line(models, [CONFIG_FILE, METRICS_FILE, EVALUATION_FILE], notes)]


def folds_block(models: list[Model]) -> list[str]:
    rows = []
    for model in models:
        folds = ((model.metrics or {}).get("calibration") or {}).get("folds")
        if folds:
            rows.append(
                [
                    model_cell(model),
                    str(folds["folds"]),
                    " ".join(f"{top1 * 100:.2f}" for top1 in folds["fold_top1"]),
                    f"**{folds['top1_mean'] * 100:.2f} +- {folds['top1_std'] * 100:.2f}**",
                    pct(evaluation_value(model, "top1_single_view")),
                ]
            )
    columns = ["model (its own recipe)", "folds", "fold top-1 %", "mean +- sd %", "`valid` top-1, one view"]
    lines = table(columns, rows)
    return [*lines, "", source_line(models, [METRICS_FILE, EVALUATION_FILE])]


def int8_row(name: str, figures: dict) -> list[str]:
    change = -figures["top1_drop_points"] or 0.0
    holds_on = ", ".join(f"`{cpu_class}`" for cpu_class in figures.get("holds_on", [])) or "not recorded"
    lost = figures["dog_photos_lost"]
    return [
        f"`{name}`",
        holds_on,
        f"{pct(figures['top1'])} ({change:+.2f} points)",
        pct(figures["top5"]),
        f"{figures['answers_changed']}",
        f"{figures['dog_photos_below_threshold']} ({lost} lost)",
        f"{figures['max_dog_probability_change']:.2f}",
        f"{figures['seconds']:.0f}",
        yesno(figures["qualifies"]),
    ]


def cpu_note(record: dict) -> str:
    cpu = record.get("cpu")
    if not cpu:
        return "not recorded"
    features = ", ".join(cpu["features"]) or "no int8 features"
    return f"{cpu['model']} ({features}; class `{cpu['class']}`)"


def photos(record: dict) -> str:
    every = record["valid_every"]
    return f"{record['valid_images']:,} valid photos" + (f" (every {every}th)" if every > 1 else " (all)")


INT8_COLUMNS = [
    "variant",
    "holds on",
    "top-1 (change)",
    "top-5",
    "answers changed",
    "dog photos below threshold",
    "largest dog-probability change",
    "whole split (s)",
    "qualifies",
]


def fp32_row(fp32: dict) -> list[str]:
    below, seconds = str(fp32["dog_photos_below_threshold"]), f"{fp32['seconds']:.0f}"
    return ["fp32", "", pct(fp32["top1"]), pct(fp32["top5"]), "", below, "", seconds, ""]


def int8_block(model: Model) -> list[str]:
    """One model's quantization record: said plainly to be stale when measured on other weights."""
    record = model.quantization
    if record is None:
        return [f"`{model.path}` has no {QUANTIZATION_FILE}: `make int8` measures it.", ""]
    current = record.get("source_digest") == model.digest
    lines = (
        []
        if current
        else [
            f"**Stale: these figures are not the committed `{model.path}`'s.** They were measured on other "
            f"weights; `python -m training.quantize --model-dir {model.path}` measures them again.",
            "",
        ]
    )
    rows = [int8_row(name, figures) for name, figures in record["int8"].items()] + [fp32_row(record["fp32"])]
    notes = {model.path: f"{digest_note(record, model, QUANTIZATION_FILE)}; its CPU: {cpu_note(record)}"}
    return [
        *lines,
        f"`{model.path}`, {photos(record)}, int8 calibrated on {record['calibration_images']} train photos; "
        f"`make int8` builds `{record['variant']}`; int8 is the model's default runtime: "
        f"**{yesno(record['default'] and current)}**.",
        "",
        *table(INT8_COLUMNS, rows),
        "",
        source_line([model], [QUANTIZATION_FILE], notes),
    ]


def pets_block(models: list[Model]) -> list[str]:
    found = [model for model in models if model.pets]
    notes = {m.path: digest_note(m.pets, m, PETS_FILE) for m in found}
    return [pets_table([m.pets for m in found]), "", source_line(found, [PETS_FILE], notes)]


def blocks(models: list[Model]) -> dict[str, list[str]]:
    """Every block's lines, by name."""
    found = {
        "models": models_block(models),
        "calibration": calibration_block(models),
        "folds": folds_block(models),
        "pets-heldout": pets_block(models),
    }
    for model in models:
        found[f"int8-{model.folder}"] = int8_block(model)
    return found


def render(page: str, models: list[Model]) -> str:
    """`page` with every block rendered. ValueError for a block the page lacks or one nothing renders."""
    found = blocks(models)
    placed = [match["name"] for match in BLOCK.finditer(page)]
    missing, unknown = sorted(set(found) - set(placed)), sorted(set(placed) - set(found))
    if missing or unknown:
        raise ValueError(
            f"the page needs one <!-- model:NAME --> ... <!-- /model:NAME --> block for each of: "
            f"{', '.join(found)} (missing: {', '.join(missing) or 'none'}; "
            f"unknown: {', '.join(unknown) or 'none'})"
        )
    return BLOCK.sub(
        lambda match: "\n".join(
            [f"<!-- model:{match['name']} -->", *found[match["name"]], f"<!-- /model:{match['name']} -->"]
        ),
        page,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--docs", type=Path, help="the Markdown page whose blocks to rewrite")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    models = [read_model(model_dir) for model_dir in args.model_dirs]
    if not args.docs:
        for name, lines in blocks(models).items():
            print(f"## {name}\n\n" + "\n".join(lines) + "\n")
        return
    before = args.docs.read_text()
    try:
        after = render(before, models)
    except ValueError as error:
        sys.exit(f"error: {args.docs}: {error}")
    if args.check:
        if after != before:
            sys.exit(f"{args.docs} differs from what the model records render to: run {COMMAND} ...")
        return
    if after != before:
        args.docs.write_text(after)
        print(f"rewrote the model blocks in {args.docs}")


if __name__ == "__main__":
    main()
