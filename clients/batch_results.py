"""The results of classifying many images: one row per image, the results file, the summary.

One format for the local batch command (`clients.batch`) and the Batch Transform job
(`training.jobs transform`): a CSV or JSON-lines file of

    key, label, breed, probability, confident, is_dog, dog_probability, error, message

and one step, `rows_from_outputs`, that turns a transform's `.out` answers into its rows wherever they lie.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TextIO

OUT_SUFFIX = ".out"  # Batch Transform names each object's answer `<key>.out`
FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class Row:
    """One image's result: the top breed, or the error that kept it from being classified."""

    key: str
    label: str = ""
    breed: str = ""
    probability: float | None = None
    # Whether the model stands by its top breed (its confidence threshold); empty for models without one.
    confident: bool | None = None
    is_dog: bool | None = None
    dog_probability: float | None = None
    error: str = ""
    message: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)


COLUMNS = [field.name for field in fields(Row)]
# A results file written before `confident` was a column; resuming it rewrites it with all of COLUMNS.
_EARLIER_COLUMNS = [name for name in COLUMNS if name != "confident"]


def row_from_answer(key: str, answer: object) -> Row:
    """The row for one answer: the endpoint's or the API's response object, or an `{"error": ...}` one."""
    if not isinstance(answer, dict):
        return Row(key, error="bad_answer", message=f"expected a JSON object, got {type(answer).__name__}")
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {"message": str(answer["error"])}
        return Row(key, error=str(error.get("code") or "error"), message=str(error.get("message", "")))
    try:
        top = answer["predictions"][0]
        return Row(
            key,
            label=top["label"],
            breed=top["breed"],
            probability=float(top["probability"]),
            confident=answer["confident"] if isinstance(answer.get("confident"), bool) else None,
            is_dog=bool(answer["is_dog"]),
            dog_probability=float(answer["dog_probability"]),
        )
    except (KeyError, IndexError, TypeError, ValueError) as error:
        return Row(key, error="bad_answer", message=f"not a classification ({type(error).__name__}: {error})")


def row_from_output(key: str, body: bytes | None) -> Row:
    """The row for one Batch Transform output (`key.out`'s bytes), or for an input the job wrote none for."""
    if body is None:
        return Row(key, error="no_output", message="the job wrote no .out for this object (see its logs)")
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        return Row(key, error="bad_answer", message=f"the .out is not JSON: {error}")
    return row_from_answer(key, answer)


def rows_from_outputs(keys: Iterable[str], read_output: Callable[[str], bytes | None]) -> Iterator[Row]:
    """Rows for a transform's inputs, from `read_output(key)`: the bytes of `key.out`, or None if missing.

    One step for both jobs: the AWS one reads S3, the local one a folder.
    """
    for key in keys:
        yield row_from_output(key, read_output(key))


# --- the results file ---


def format_of(path: Path, requested: str | None) -> str:
    if requested:
        return requested
    return "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"


def read_rows(path: Path, fmt: str) -> list[Row]:
    """The rows already in a results file (none when it does not exist). Raises ValueError when it is not
    one of ours."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as stream:
        if fmt == "jsonl":
            records = [json.loads(line) for line in stream if line.strip()]
        else:
            reader = csv.DictReader(stream)
            if reader.fieldnames not in (COLUMNS, _EARLIER_COLUMNS):
                raise ValueError(
                    f"{path} is not a results file of this command (columns {reader.fieldnames})"
                )
            records = [_typed(record) for record in reader]
    try:
        return [Row(**record) for record in records]
    except TypeError as error:
        raise ValueError(f"{path} is not a results file of this command ({error})") from error


def _typed(record: dict[str, str]) -> dict:
    typed: dict = dict(record)
    for name in ("probability", "dog_probability"):
        typed[name] = float(record[name]) if record[name] else None
    for name in ("confident", "is_dog"):
        typed[name] = {"True": True, "False": False}.get(record.get(name, ""))
    return typed


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """The last row of each key, in the place of its first: a retried image's new row replaces the old."""
    latest: dict[str, Row] = {}
    for row in rows:
        latest[row.key] = row  # a dict keeps a key where it was first put
    return list(latest.values())


def compact(path: Path, fmt: str) -> list[Row]:
    """Rewrite a results file with one row per key (`latest_rows`), in all of COLUMNS; returns its rows.

    A run appends as it goes, so that an interrupted one loses nothing; this replaces, once it is over, the
    rows of the failures it tried again. The new file takes the old one's place in one rename.
    """
    rows = read_rows(path, fmt)
    latest = latest_rows(rows)
    if latest != rows or (fmt == "csv" and rows and _columns(path) != COLUMNS):
        fresh = path.with_name(path.name + ".partial")
        write_rows(latest, fresh, fmt)
        fresh.replace(path)
    return latest


def _columns(path: Path) -> list[str] | None:
    with path.open(newline="") as stream:
        return csv.DictReader(stream).fieldnames


class ResultsWriter:
    """Appends rows to a CSV or JSON-lines file, flushed after each, so an interrupted run loses nothing."""

    def __init__(self, path: Path, fmt: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self.stream: TextIO = path.open("a", newline="")
        self.fmt = fmt
        self.csv = csv.DictWriter(self.stream, fieldnames=COLUMNS) if fmt == "csv" else None
        if self.csv and fresh:
            self.csv.writeheader()
        self.lock = threading.Lock()

    def write(self, row: Row) -> None:
        with self.lock:
            if self.csv:
                self.csv.writerow(asdict(row))
            else:
                self.stream.write(json.dumps(asdict(row)) + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def write_rows(rows: Iterable[Row], path: Path, fmt: str) -> list[Row]:
    """Write `rows` as a new results file; returns them."""
    if path.exists():
        path.unlink()
    writer = ResultsWriter(path, fmt)
    written = []
    try:
        for row in rows:
            writer.write(row)
            written.append(row)
    finally:
        writer.close()
    return written


# --- the summary ---


@dataclass(frozen=True)
class Summary:
    images: int
    classified: int
    not_a_dog: int
    breeds: Counter
    failures: Counter

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Summary:
        """Over the last row of each key (a re-run's answer replaces an earlier failure)."""
        latest = latest_rows(rows)
        done = [row for row in latest if not row.failed]
        return cls(
            images=len(latest),
            classified=len(done),
            not_a_dog=sum(1 for row in done if not row.is_dog),
            breeds=Counter(row.breed for row in done if row.is_dog),
            failures=Counter(row.error for row in latest if row.failed),
        )

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "classified": self.classified,
            "not_a_dog": self.not_a_dog,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures.most_common()),
            "breeds": dict(self.breeds.most_common()),
        }

    def text(self) -> str:
        failed = sum(self.failures.values())
        lines = [
            f"{self.images} images: {self.classified} classified, {failed} failed",
            f"dogs: {self.classified - self.not_a_dog}, not a dog: {self.not_a_dog}",
        ]
        if self.breeds:
            lines.append("per breed (top answer of each dog):")
            lines += [f"  {count:6d}  {breed}" for breed, count in self.breeds.most_common()]
        if self.failures:
            lines.append("failures by reason:")
            lines += [f"  {count:6d}  {reason}" for reason, count in self.failures.most_common()]
        return "\n".join(lines)
