"""Classify many images: `python -m clients.batch SOURCE --output results.csv [--endpoint URL | --api URL]`.

SOURCE is a folder (every file under it, recursively) or a text file of image URLs (one per line). The
images go in groups of up to `--batch-size`, one request per group and N requests at a time, to the local
endpoint's `/invocations` as a JSON batch (the default, as a SageMaker container is called) or to the API's
`/predict/batch` (URLs are then fetched by the API; for the endpoint, which never fetches, this command
fetches them). Both answer each image of a group on its own, so a bad image fails only its own row; a group
refused as a whole (too many pixels together, a stage that takes no batches) is sent again one image per
request. Results are rows of CSV or JSON lines:

    key, label, breed, probability, confident, is_dog, dog_probability, error, message

(`key` is the path under the folder or the URL; `confident` whether the model stands by its top breed;
`error` is a code such as `unreadable_image`, the same whether the images went to the endpoint or the API).
HEIC and AVIF photos, which the endpoint does not decode, are converted to JPEG by the API, or by this
command itself when it sends to the endpoint (with the API's own checks and bounds). A re-run with the same
output skips what it already classified and tries the failures again, their new rows replacing the old ones
once the run is over. At the end it prints a summary (images, per-breed counts, not-a-dog count, failures
by reason) and exits 1 if any image failed.

With `--transform-output DIR` it plays SageMaker Batch Transform on the folder: each file `key` is sent as
a transform job sends an S3 object (its bytes, the job's ContentType and Accept) and the answer is written
to `DIR/key.out`, as the job writes `s3://.../out/key.out`. The results file is then made from the .out
files by `batch_results.rows_from_outputs`, the very step `python -m training.jobs transform` runs on the
job's output.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import urllib3

from chalicelib.errors import ApiError
from chalicelib.image import prepare_image
from chalicelib.settings import JPEG_QUALITY, MAX_BATCH_ITEMS, MAX_PIXELS, MAX_UPLOAD_BYTES
from clients.batch_results import (
    FORMATS,
    OUT_SUFFIX,
    ResultsWriter,
    Row,
    Summary,
    compact,
    format_of,
    read_rows,
    row_from_answer,
    row_from_output,
    rows_from_outputs,
    write_rows,
)
from serving.contract import JSON, MAX_BODY_BYTES, MAX_INSTANCES, MODEL_BATCH, RECORD_JSON, X_IMAGE

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
# HEIF and AVIF files begin with this box after its length. Converted for the endpoint, the shorter side is
# at most this: more than any model's input, which the endpoint's own preprocessing shrinks to.
ISO_MEDIA_BOX = b"ftyp"
CONVERTED_SHORTER_SIDE = 1024
# Images per request to the endpoint: its model thread's batch (serving.contract.MODEL_BATCH), so each
# request is one model call, and the HTTP and JSON work per image is a quarter of one image per request.
DEFAULT_ENDPOINT_BATCH = MODEL_BATCH
# Through the API, the most /predict/batch takes: prod allows each key a few requests per second, not images.
DEFAULT_API_BATCH = MAX_BATCH_ITEMS
# Requests in flight: enough that the endpoint's model thread always has the next group decoded and waiting.
DEFAULT_CONCURRENCY = 4
# The JSON around each base64 image of the endpoint's batch, and around the batch.
_INSTANCE_OVERHEAD = len('{"b64": ""}, ')
_BATCH_OVERHEAD = len('{"instances": []}')
# A group answered with one of these (or no answer at all) met an endpoint or API that is busy or down after
# the retries, not a refusal of the group: sending its images one by one would only add load.
UNAVAILABLE_STATUSES = {429, 503, 504}
CONNECT_TIMEOUT_S = 5.0
RETRIES = 4
API_KEY_ENV = "DOGBREEDS_API_KEY"
READ_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 10.0
EXIT_FAILED = 1
EXIT_USAGE = 2


# --- what to classify ---


@dataclass(frozen=True)
class Item:
    key: str  # the path under the folder (as S3 keys are written) or the URL
    path: Path | None = None
    url: str | None = None


def folder_items(root: Path) -> list[Item]:
    """Every non-hidden file under `root`, recursively, in a stable order."""
    items = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            items.append(Item(relative.as_posix(), path=path))
    return items


def url_items(listing: Path) -> list[Item]:
    """The URLs of a text file, one per line; blank lines and `#` comments are skipped, repeats once."""
    urls = [line.strip() for line in listing.read_text().splitlines()]
    return [
        Item(url, url=url) for url in dict.fromkeys(url for url in urls if url and not url.startswith("#"))
    ]


# --- where to send them ---


def for_the_endpoint(data: bytes) -> bytes:
    """`data` as the endpoint takes it: a HEIC/HEIF or AVIF file (an ISO media file), which the endpoint does
    not decode, converted to JPEG the way the API converts it, with its checks (pixels, aspect, coded size)
    and upright; anything else as it is. Raises Failure with the API's error code."""
    if data[4:8] != ISO_MEDIA_BOX:
        return data
    try:
        prepared = prepare_image(
            data,
            resize_size=CONVERTED_SHORTER_SIDE,
            max_pixels=MAX_PIXELS,
            quality=JPEG_QUALITY,
            max_bytes=MAX_BODY_BYTES,
        )
    except ApiError as error:
        raise Failure(error.code, error.message) from error
    return prepared.jpeg


class Failure(Exception):
    """One image (or a group) could not be classified; `code` is its reason in the summary."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status  # the HTTP status that said so, None when there was no answer

    @property
    def unavailable(self) -> bool:
        return self.status is None or self.status in UNAVAILABLE_STATUSES


@dataclass(frozen=True)
class Loaded:
    """An item and what to send for it: its bytes, or nothing for a URL the API fetches itself."""

    item: Item
    data: bytes | None


class Client:
    """HTTP to the endpoint or the API: one thread-safe connection pool for all the workers."""

    def __init__(self, base_url: str, connections: int, api: bool, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.api_key = api_key
        self.http = urllib3.PoolManager(
            maxsize=connections,  # per host
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        )
        # Throttling (prod allows each API key 10 requests/s) and an endpoint still loading or shedding load
        # are waited out, as their Retry-After asks; nothing else is sent twice.
        self.retries = urllib3.Retry(
            total=RETRIES,
            connect=0,
            read=0,
            status_forcelist=(429, 503),
            allowed_methods=None,
            backoff_factor=0.5,
            respect_retry_after_header=True,
            raise_on_status=False,
        )

    # --- one image per request ---

    def answer(self, item: Item) -> bytes:
        """The answer's body for one item. Raises Failure when there is none to give."""
        return self.answer_loaded(self.load(item))

    def answer_loaded(self, loaded: Loaded) -> bytes:
        if self.api:
            if loaded.data is None:
                return self._post("/predict", json.dumps({"url": loaded.item.url}).encode(), JSON, JSON)
            return self._post("/predict/image", loaded.data, "application/octet-stream", JSON)
        # As a transform job sends an object: its bytes, and errors asked for in place.
        return self._post("/invocations", loaded.data, X_IMAGE, RECORD_JSON)

    # --- a group per request ---

    def batch_cost(self, loaded: Loaded) -> int:
        """What one item adds to a group's request, in the unit of `max_batch_cost`."""
        if self.api:
            return len(loaded.data) if loaded.data is not None else 0  # the API counts the images' bytes
        return (len(loaded.data) + 2) // 3 * 4 + _INSTANCE_OVERHEAD  # the endpoint counts the body

    @property
    def max_batch_cost(self) -> int:
        return MAX_UPLOAD_BYTES if self.api else MAX_BODY_BYTES - _BATCH_OVERHEAD

    @property
    def max_batch_size(self) -> int:
        return MAX_BATCH_ITEMS if self.api else MAX_INSTANCES

    def answers(self, group: list[Loaded]) -> list[object]:
        """The answer objects of a group sent as one request, in its order (each a classification or an
        `{"error": ...}` of its own). Raises Failure when the group as a whole got none."""
        if self.api:
            return self._api_batch(group)
        instances = [{"b64": base64.b64encode(loaded.data).decode("ascii")} for loaded in group]
        body = json.dumps({"instances": instances}).encode()
        answer = _json(self._post("/invocations", body, JSON, RECORD_JSON))
        if isinstance(answer, list) and len(answer) == len(group):
            return answer
        # With errors asked for in place, a batch refused as a whole is one error object.
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            status = error.get("status") if isinstance(error.get("status"), int) else 400
            raise Failure(str(error.get("code") or "error"), str(error.get("message", "")), status)
        raise Failure("bad_answer", f"expected {len(group)} answers", 200)

    def _api_batch(self, group: list[Loaded]) -> list[object]:
        images = [loaded for loaded in group if loaded.data is not None]
        urls = [loaded for loaded in group if loaded.data is None]
        request = {
            "images": [base64.b64encode(loaded.data).decode("ascii") for loaded in images],
            "urls": [loaded.item.url for loaded in urls],
        }
        answer = _json(self._post("/predict/batch", json.dumps(request).encode(), JSON, JSON))
        # The answer mirrors the request: {"images": [...], "urls": [...]}, one result per item in order.
        found = answer if isinstance(answer, dict) else {}
        per_image, per_url = found.get("images"), found.get("urls")
        if not (_is_list_of(per_image, len(images)) and _is_list_of(per_url, len(urls))):
            raise Failure("bad_answer", "not an answer to the batch sent", 200)
        per_image, per_url = iter(per_image), iter(per_url)
        return [next(per_image) if loaded.data is not None else next(per_url) for loaded in group]

    # --- the pieces ---

    def load(self, item: Item) -> Loaded:
        """The item with its bytes (a URL through the API stays a URL). Raises Failure."""
        if item.path is not None:
            try:
                size = item.path.stat().st_size
                if size > MAX_BODY_BYTES:
                    raise Failure("too_large", f"{size} bytes; at most {MAX_BODY_BYTES}")
                data = item.path.read_bytes()
            except OSError as error:
                raise Failure("unreadable_file", str(error)) from error
            return Loaded(item, data if self.api else for_the_endpoint(data))
        if self.api:
            return Loaded(item, None)
        return Loaded(item, for_the_endpoint(self._fetch(item.url)))

    def _fetch(self, url: str) -> bytes:
        try:
            response = self.http.request("GET", url, preload_content=False, redirect=3)
        except (urllib3.exceptions.HTTPError, ValueError) as error:
            raise Failure("url_fetch_failed", f"cannot fetch: {error}") from error
        with response:
            if response.status != 200:
                raise Failure("url_fetch_failed", f"the URL answered HTTP {response.status}")
            data = response.read(MAX_BODY_BYTES + 1)
        if len(data) > MAX_BODY_BYTES:
            raise Failure("too_large", f"over {MAX_BODY_BYTES} bytes")
        return data

    def _post(self, path: str, body: bytes, content_type: str, accept: str) -> bytes:
        headers = {"Content-Type": content_type, "Accept": accept}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        try:
            response = self.http.request(
                "POST", self.base_url + path, body=body, headers=headers, retries=self.retries
            )
        except urllib3.exceptions.HTTPError as error:
            raise Failure("connection_failed", f"{self.base_url}: {error}") from error
        if response.status == 200:
            return response.data
        if self.api and response.status == 202:
            # An asynchronous stage queues the photo; SageMaker writes its answer to S3 later.
            try:
                location = json.loads(response.data)["output_location"]
            except (ValueError, KeyError, TypeError):
                location = "(not given)"
            raise Failure(
                "queued", f"queued on an asynchronous endpoint; its answer will be at {location}", 202
            )
        if self.api:
            # The API's errors carry their own code and message; pass them on as the row's.
            try:
                error = json.loads(response.data)["error"]
                raise Failure(str(error["code"]), str(error["message"]), response.status)
            except (ValueError, KeyError, TypeError):
                pass
        message = response.data[:300].decode(errors="replace")
        raise Failure(f"http_{response.status}", message, response.status)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as error:
        raise Failure("bad_answer", "the answer is not JSON", 200) from error


def _is_list_of(value: object, length: int) -> bool:
    return isinstance(value, list) and len(value) == length


def groups_of(client: Client, loaded: list[Loaded], size: int) -> Iterator[list[Loaded]]:
    """`loaded` in order, in groups of at most `size` items that one request of the target can carry.

    An item too big to share a request is a group of its own (sent as a single image, with its own limits).
    """
    size = min(size, client.max_batch_size)
    group: list[Loaded] = []
    cost = 0
    for item in loaded:
        item_cost = client.batch_cost(item)
        if group and (len(group) == size or cost + item_cost > client.max_batch_cost):
            yield group
            group, cost = [], 0
        group.append(item)
        cost += item_cost
    if group:
        yield group


# --- running it ---


class Progress:
    """tqdm on a terminal; elsewhere (logs, CI) one line every PROGRESS_EVERY_S seconds and at the end."""

    def __init__(self, total: int, stream: TextIO):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream
        self.started = self.last = time.monotonic()
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=stream)

    def update(self, row: Row) -> None:
        self.done += 1
        self.failed += row.failed
        if self.bar is not None:
            self.bar.update()
            if row.failed:
                self.bar.set_postfix(failed=self.failed)
        elif time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.last = time.monotonic()
            self.line()

    def line(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        print(
            f"{self.done}/{self.total} images, {self.failed} failed, {rate:.1f} images/s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self.line()


def classify_items(
    items: list[Item],
    rows_of: Callable[[list[Item]], list[Row]],
    group_size: int,
    concurrency: int,
    record: Callable[[Row], None],
) -> None:
    """`rows_of` for every `group_size` items, `concurrency` groups at a time, each row given to `record` as
    its group comes back."""
    groups = [items[start : start + group_size] for start in range(0, len(items), group_size)]
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        for future in as_completed([pool.submit(rows_of, group) for group in groups]):
            for row in future.result():
                record(row)
    finally:
        # On Ctrl-C, what has not started is dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)


def classified_rows(client: Client, items: list[Item]) -> list[Row]:
    """The rows of some items, in their order: as few requests as the target's limits allow."""
    rows: dict[str, Row] = {}
    loaded: list[Loaded] = []
    for item, each in zip(items, loaded_items(client, items), strict=True):
        if isinstance(each, Failure):
            rows[item.key] = Row(item.key, error=each.code, message=each.message)
        else:
            loaded.append(each)
    for group in groups_of(client, loaded, len(items)):
        for each, row in zip(group, group_rows(client, group), strict=True):
            rows[each.item.key] = row
    return [rows[item.key] for item in items]


def loaded_items(client: Client, items: list[Item]) -> list[Loaded | Failure]:
    """Each item loaded, or why it could not be; URLs the command fetches itself are fetched together."""

    def load(item: Item) -> Loaded | Failure:
        try:
            return client.load(item)
        except Failure as failure:
            return failure

    if client.api or len(items) < 2 or all(item.url is None for item in items):
        return [load(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as fetches:
        return list(fetches.map(load, items))


def group_rows(client: Client, group: list[Loaded]) -> list[Row]:
    """One request for the group; one per image if the group was refused as a whole."""
    if len(group) > 1:
        try:
            answers = client.answers(group)
        except Failure as failure:
            if failure.unavailable:
                return [Row(each.item.key, error=failure.code, message=failure.message) for each in group]
        else:
            pairs = zip(group, answers, strict=True)
            return [row_from_answer(each.item.key, answer) for each, answer in pairs]
    return [single_row(client, each) for each in group]


def single_row(client: Client, loaded: Loaded) -> Row:
    """Ask for one item's answer and make its row."""
    try:
        answer = _json(client.answer_loaded(loaded))
    except Failure as failure:
        return Row(loaded.item.key, error=failure.code, message=failure.message)
    return row_from_answer(loaded.item.key, answer)


def transformed_row(client: Client, item: Item, out_dir: Path) -> Row:
    """Ask for one item's answer as a transform job does and write it to `out_dir/key.out`, as the job would.

    The job writes nothing for an object its container failed on; the row then says why.
    """
    try:
        body = client.answer(item)
    except Failure as failure:
        return Row(item.key, error="no_output", message=f"{failure.code}: {failure.message}")
    out = out_dir / (item.key + OUT_SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    return row_from_output(item.key, body)


def run(args: argparse.Namespace, err: TextIO) -> int:
    fmt = format_of(args.output, args.format)
    try:
        # One row per image in today's columns before anything is appended (an earlier or interrupted run).
        previous = compact(args.output, fmt)
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    if args.source.is_dir():
        items = folder_items(args.source)
    elif args.source.is_file() and not args.transform_output:
        items = url_items(args.source)
    else:
        wanted = "a folder" if args.transform_output else "a folder or a file of URLs"
        print(f"error: {args.source} is not {wanted}", file=err)
        return EXIT_USAGE
    api_key = os.environ.get(API_KEY_ENV) or None
    batch_size = args.batch_size or (DEFAULT_API_BATCH if args.api else DEFAULT_ENDPOINT_BATCH)
    # Every image of every group in flight may be a URL being fetched from the same host.
    connections = args.concurrency * batch_size
    client = Client(args.api or args.endpoint, connections, api=bool(args.api), api_key=api_key)
    out_dir = args.transform_output

    # Resuming: what was classified is skipped; what failed is tried again (its new row replaces the old).
    if out_dir:
        done = {item.key for item in items if (out_dir / (item.key + OUT_SUFFIX)).is_file()}
    else:
        done = {row.key for row in previous if not row.failed}
    todo = [item for item in items if item.key not in done]
    print(f"{len(items)} images, {len(items) - len(todo)} already done, {len(todo)} to classify", file=err)

    progress = Progress(len(todo), err)
    try:
        if out_dir:
            play_transform(client, todo, out_dir, args.concurrency, progress)
        else:
            classify_into(args.output, fmt, client, todo, batch_size, args.concurrency, progress)
    finally:
        progress.close()

    if out_dir:
        rows = transform_rows(items, out_dir, args.output, fmt)
    else:
        rows = read_rows(args.output, fmt)
    summary = Summary.of(rows)
    print(summary.text(), file=err)
    return EXIT_FAILED if summary.failures else 0


def classify_into(
    output: Path, fmt: str, client: Client, todo: list[Item], batch_size: int, concurrency: int, progress
) -> None:
    """Classify `todo` in groups, appending each row to `output` as it comes."""
    writer = ResultsWriter(output, fmt)
    try:

        def record(row: Row) -> None:
            writer.write(row)
            progress.update(row)

        classify_items(todo, lambda group: classified_rows(client, group), batch_size, concurrency, record)
    finally:
        writer.close()
        # Also when interrupted: the file keeps one row per image, the latest.
        compact(output, fmt)


def play_transform(client: Client, todo: list[Item], out_dir: Path, concurrency: int, progress) -> None:
    """Batch Transform's requests, one object per request as the job sends them; answers in out_dir."""
    classify_items(
        todo,
        lambda group: [transformed_row(client, item, out_dir) for item in group],
        1,
        concurrency,
        progress.update,
    )


def transform_rows(items: list[Item], out_dir: Path, output: Path, fmt: str) -> list[Row]:
    """A transform's results come from its outputs alone, by the step the AWS command runs on S3."""

    def read_output(key: str) -> bytes | None:
        out = out_dir / (key + OUT_SUFFIX)
        return out.read_bytes() if out.is_file() else None

    return write_rows(rows_from_outputs([item.key for item in items], read_output), output, fmt)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="a folder of images, or a text file of image URLs")
    parser.add_argument("--output", "-o", type=Path, required=True, help="results file (.csv or .jsonl)")
    parser.add_argument("--format", choices=FORMATS, help="default: from the output's suffix, else csv")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help="the endpoint's base URL (default: %(default)s)"
    )
    target.add_argument(
        "--api",
        help=f"the API's base URL instead, e.g. http://127.0.0.1:8000 (prod's key from ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--concurrency", "-n", type=positive_int, default=DEFAULT_CONCURRENCY, help="requests in flight"
    )
    parser.add_argument(
        "--batch-size",
        "-b",
        type=positive_int,
        help=f"images per request (default: {DEFAULT_ENDPOINT_BATCH} to the endpoint, "
        f"{DEFAULT_API_BATCH} to the API; at most {MAX_INSTANCES} and {MAX_BATCH_ITEMS})",
    )
    parser.add_argument(
        "--transform-output",
        type=Path,
        metavar="DIR",
        help="play Batch Transform: write each answer to DIR/<key>.out, then the results from those",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.transform_output and args.api:
        print(
            "error: --transform-output plays the endpoint's job; it cannot go through --api", file=sys.stderr
        )
        return EXIT_USAGE
    if args.transform_output and (args.batch_size or 1) > 1:
        print("error: --transform-output sends one object per request, as the job does", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(args, sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
