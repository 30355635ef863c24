"""Classify many images: `python -m serving.batch SOURCE --output results.csv [--endpoint URL | --api URL]`.

SOURCE is a folder (every file under it, recursively) or a text file of image URLs (one per line). Each
image is one request, N at a time, to the local endpoint's `/invocations` (the default, as a SageMaker
container is called) or to the API's `/predict/image` and `/predict` (URLs are then fetched by the API;
for the endpoint, which never fetches, this command fetches them). Results are rows of CSV or JSON lines:

    key, label, breed, probability, is_dog, dog_probability, error, message

(`key` is the path under the folder or the URL; `error` is a code such as `unreadable_image`). A re-run
with the same output skips what it already classified and tries the failures again. At the end it prints
a summary (images, per-breed counts, not-a-dog count, failures by reason) and exits 1 if any image failed.

With `--transform-output DIR` it plays SageMaker Batch Transform on the folder: each file `key` is sent as
a transform job sends an S3 object (its bytes, the job's ContentType and Accept) and the answer is written
to `DIR/key.out`, as the job writes `s3://.../out/key.out`. The results file is then made from the .out
files by `batch_results.rows_from_outputs`, the very step `python -m training.jobs transform` runs on the
job's output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import urllib3

from serving.batch_results import (
    FORMATS,
    OUT_SUFFIX,
    TRANSFORM_ACCEPT,
    TRANSFORM_CONTENT_TYPE,
    ResultsWriter,
    Row,
    Summary,
    format_of,
    read_rows,
    row_from_answer,
    row_from_output,
    rows_from_outputs,
    write_rows,
)

JSON = "application/json"
# InvokeEndpoint's payload limit; the local endpoint and the container refuse bigger bodies anyway.
MAX_IMAGE_BYTES = 6_291_456
DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
# Enough requests in flight that the endpoint's model thread always has the next batch decoded and waiting.
DEFAULT_CONCURRENCY = 8
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


class Failure(Exception):
    """One image could not be classified; `code` is its reason in the summary."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Client:
    """HTTP to the endpoint or the API: one thread-safe connection pool for all the workers."""

    def __init__(self, base_url: str, concurrency: int, api: bool, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.api_key = api_key
        self.http = urllib3.PoolManager(
            maxsize=concurrency,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        )
        # Throttling (prod allows each API key 10 requests/s) and an endpoint still loading are waited out, as
        # their Retry-After asks; nothing else is sent twice.
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

    def answer(self, item: Item) -> bytes:
        """The answer's body for one item. Raises Failure when there is none to give."""
        if self.api:
            if item.url is not None:
                return self._post("/predict", json.dumps({"url": item.url}).encode(), JSON, JSON)
            return self._post("/predict/image", self.image_bytes(item), "application/octet-stream", JSON)
        # As a transform job sends an object: its bytes, and errors asked for in place.
        return self._post("/invocations", self.image_bytes(item), TRANSFORM_CONTENT_TYPE, TRANSFORM_ACCEPT)

    def image_bytes(self, item: Item) -> bytes:
        if item.path is not None:
            try:
                size = item.path.stat().st_size
                if size > MAX_IMAGE_BYTES:
                    raise Failure("too_large", f"{size} bytes; at most {MAX_IMAGE_BYTES}")
                return item.path.read_bytes()
            except OSError as error:
                raise Failure("unreadable_file", str(error)) from error
        return self._fetch(item.url)

    def _fetch(self, url: str) -> bytes:
        try:
            response = self.http.request("GET", url, preload_content=False, redirect=3)
        except (urllib3.exceptions.HTTPError, ValueError) as error:
            raise Failure("url_fetch_failed", f"cannot fetch: {error}") from error
        with response:
            if response.status != 200:
                raise Failure("url_fetch_failed", f"the URL answered HTTP {response.status}")
            data = response.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise Failure("too_large", f"over {MAX_IMAGE_BYTES} bytes")
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
        if self.api:
            # The API's errors carry their own code and message; pass them on as the row's.
            try:
                error = json.loads(response.data)["error"]
                raise Failure(str(error["code"]), str(error["message"]))
            except (ValueError, KeyError, TypeError):
                pass
        raise Failure(f"http_{response.status}", response.data[:300].decode(errors="replace"))


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
    items: list[Item], answer_row: Callable[[Item], Row], concurrency: int, record: Callable[[Row], None]
) -> None:
    """`answer_row` for every item, `concurrency` at a time, each row given to `record` as it comes back."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        for future in as_completed([pool.submit(answer_row, item) for item in items]):
            record(future.result())
    finally:
        # On Ctrl-C, what has not started is dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)


def classified_row(client: Client, item: Item) -> Row:
    """Ask for one item's answer and make its row."""
    try:
        body = client.answer(item)
    except Failure as failure:
        return Row(item.key, error=failure.code, message=failure.message)
    try:
        answer = json.loads(body)
    except ValueError:
        return Row(item.key, error="bad_answer", message="the answer is not JSON")
    return row_from_answer(item.key, answer)


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
        previous = read_rows(args.output, fmt)
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
    client = Client(args.api or args.endpoint, args.concurrency, api=bool(args.api), api_key=api_key)
    out_dir = args.transform_output

    # Resuming: what was classified is skipped; what failed is tried again (its new row comes later).
    if out_dir:
        done = {item.key for item in items if (out_dir / (item.key + OUT_SUFFIX)).is_file()}
    else:
        done = {row.key for row in previous if not row.failed}
    todo = [item for item in items if item.key not in done]
    print(f"{len(items)} images, {len(items) - len(todo)} already done, {len(todo)} to classify", file=err)

    progress = Progress(len(todo), err)
    try:
        if out_dir:
            classify_items(
                todo, lambda item: transformed_row(client, item, out_dir), args.concurrency, progress.update
            )
        else:
            writer = ResultsWriter(args.output, fmt)
            try:

                def record(row: Row) -> None:
                    writer.write(row)
                    progress.update(row)

                classify_items(todo, lambda item: classified_row(client, item), args.concurrency, record)
            finally:
                writer.close()
    finally:
        progress.close()

    if out_dir:
        # A transform's results come from its outputs alone, by the step the AWS command runs on S3.
        def read_output(key: str) -> bytes | None:
            out = out_dir / (key + OUT_SUFFIX)
            return out.read_bytes() if out.is_file() else None

        rows = write_rows(rows_from_outputs([item.key for item in items], read_output), args.output, fmt)
    else:
        rows = read_rows(args.output, fmt)
    summary = Summary.of(rows)
    print(summary.text(), file=err)
    return EXIT_FAILED if summary.failures else 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.batch",
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
    try:
        return run(args, sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
