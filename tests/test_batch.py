"""`python -m clients.batch` on a small folder of real photos, against the real endpoint process over HTTP."""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import LABRADOR, PROJECT, SPANIEL, SampleFiles, async_stage, file_server
from local_servers import serving_in_thread
from pictures import as_a_phone_stores_it, claiming_size, in_format
from PIL import Image

from clients import batch, batch_results
from serving import contract


@pytest.fixture
def photos(samples, tmp_path) -> Path:
    """Two photos in nested folders, a file that is no image, and a hidden file that is skipped."""
    root = tmp_path / "photos"
    (root / "labs").mkdir(parents=True)
    (root / "other" / "deeper").mkdir(parents=True)
    shutil.copy(samples / LABRADOR, root / "labs" / LABRADOR)
    shutil.copy(samples / SPANIEL, root / "other" / "deeper" / SPANIEL)
    (root / "other" / "notes.txt").write_text("not a photo")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return root


def run_batch(capsys, *argv: str):
    code = batch.main(list(argv))
    return code, capsys.readouterr().err


def csv_rows(path: Path) -> dict[str, dict]:
    with path.open(newline="") as stream:
        return {row["key"]: row for row in csv.DictReader(stream)}


def test_a_folder_becomes_a_csv_with_a_summary_and_a_rerun_resumes(endpoint, photos, tmp_path, capsys):
    results = tmp_path / "results.csv"
    code, err = run_batch(capsys, str(photos), "-o", str(results), "--endpoint", endpoint.url, "-n", "2")

    rows = csv_rows(results)
    assert set(rows) == {f"labs/{LABRADOR}", f"other/deeper/{SPANIEL}", "other/notes.txt"}
    lab = rows[f"labs/{LABRADOR}"]
    assert (lab["label"], lab["breed"], lab["is_dog"], lab["error"]) == (
        "Labrador_retriever",
        "Labrador retriever",
        "True",
        "",
    )
    assert 0.5 < float(lab["probability"]) <= 1
    assert lab["confident"] in ("True", "False")
    assert rows["other/notes.txt"]["error"] == "unreadable_image"
    assert "cannot decode" in rows["other/notes.txt"]["message"]
    # A bad file is reported, never the end of the run; the exit status says something failed.
    assert code == batch.EXIT_FAILED
    assert "3 images: 2 classified, 1 failed" in err
    assert "not a dog: 0" in err
    assert "1  Labrador retriever" in err and "1  unreadable_image" in err

    # The re-run sends only what failed; its new row replaces the failure's, where it was.
    with results.open(newline="") as stream:
        keys_before = [row["key"] for row in csv.DictReader(stream)]
    (photos / "other" / "notes.txt").unlink()
    shutil.copy(photos / "labs" / LABRADOR, photos / "other" / "notes.txt")
    code, err = run_batch(capsys, str(photos), "-o", str(results), "--endpoint", endpoint.url)
    assert "3 images, 2 already done, 1 to classify" in err
    assert code == 0 and "3 images: 3 classified, 0 failed" in err
    with results.open(newline="") as stream:
        rerun = list(csv.DictReader(stream))
    assert [row["key"] for row in rerun] == keys_before
    retried = next(row for row in rerun if row["key"] == "other/notes.txt")
    assert (retried["label"], retried["error"]) == ("Labrador_retriever", "")


def test_transform_output_is_laid_out_as_the_job_writes_it(endpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    results = tmp_path / "summary.jsonl"
    argv = (str(photos), "-o", str(results), "--endpoint", endpoint.url, "--transform-output", str(out))
    code, err = run_batch(capsys, *argv)

    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert written == [f"labs/{LABRADOR}.out", f"other/deeper/{SPANIEL}.out", "other/notes.txt.out"]
    answer = json.loads((out / "labs" / f"{LABRADOR}.out").read_bytes())
    assert set(answer) == {"predictions", "confident", "is_dog", "dog_probability", "model"}
    failure = json.loads((out / "other" / "notes.txt.out").read_bytes())
    assert failure["error"]["code"] == "unreadable_image" and failure["error"]["status"] == 400
    rows = {row["key"]: row for row in map(json.loads, results.read_text().splitlines())}
    assert rows[f"labs/{LABRADOR}"]["label"] == "Labrador_retriever"
    assert rows[f"labs/{LABRADOR}"]["probability"] == answer["predictions"][0]["probability"]
    assert rows["other/notes.txt"]["error"] == "unreadable_image"
    assert code == batch.EXIT_FAILED and "3 images: 2 classified, 1 failed" in err

    # Resuming skips the objects that have their .out; a missing one is made again.
    (out / "labs" / f"{LABRADOR}.out").unlink()
    code, err = run_batch(capsys, *argv)
    assert "3 images, 2 already done, 1 to classify" in err
    assert json.loads((out / "labs" / f"{LABRADOR}.out").read_bytes()) == answer


def test_the_command_does_not_import_torch():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, clients.batch; print(sorted({'torch', 'numpy'} & set(sys.modules)))",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_the_summary_of_outputs_names_inputs_without_one():
    outputs = {"a.jpg": json.dumps({"error": {"code": "too_many_pixels", "message": "big"}}).encode()}
    rows = list(batch_results.rows_from_outputs(["a.jpg", "b.jpg"], outputs.get))
    assert [(row.key, row.error) for row in rows] == [("a.jpg", "too_many_pixels"), ("b.jpg", "no_output")]


def test_a_url_list_through_the_endpoint(endpoint, sample_files, tmp_path, capsys):
    files = sample_files
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# photos\n{files}/{LABRADOR}\n\n{files}/missing.jpg\n{files}/{LABRADOR}\n")
    results = tmp_path / "results.jsonl"
    code, err = run_batch(capsys, str(listing), "-o", str(results), "--endpoint", endpoint.url)
    rows = {row["key"]: row for row in map(json.loads, results.read_text().splitlines())}
    assert rows[f"{files}/{LABRADOR}"]["label"] == "Labrador_retriever"
    assert rows[f"{files}/missing.jpg"]["error"] == "url_fetch_failed"
    assert code == batch.EXIT_FAILED and "2 images: 1 classified, 1 failed" in err


class SlowFiles(SampleFiles):
    """Files that take a while to start answering; counts how many requests it serves at once."""

    lock = threading.Lock()
    in_flight = 0
    most_in_flight = 0

    def do_GET(self):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            time.sleep(0.3)
            super().do_GET()
        finally:
            with cls.lock:
                cls.in_flight -= 1


def test_the_urls_of_a_group_are_fetched_together(endpoint, samples, tmp_path, capsys):
    served = type("Served", (SlowFiles,), {"lock": threading.Lock(), "in_flight": 0, "most_in_flight": 0})
    names = [LABRADOR, SPANIEL, "people_with_dog.jpg", "missing.jpg"]
    with file_server(samples, served) as files:
        listing = tmp_path / "urls.txt"
        listing.write_text("".join(f"{files}/{name}\n" for name in names))
        results = tmp_path / "results.csv"
        argv = (str(listing), "-o", str(results), "--endpoint", endpoint.url, "-n", "1", "-b", "4")
        code, err = run_batch(capsys, *argv)
    # One group in flight, and still its four URLs were being fetched at the same time.
    assert served.most_in_flight > 1
    assert code == batch.EXIT_FAILED and "4 images: 3 classified, 1 failed" in err
    assert csv_rows(results)[f"{files}/{LABRADOR}"]["label"] == "Labrador_retriever"


def test_an_unreachable_endpoint_fails_every_image_without_a_traceback(photos, tmp_path):
    from local_servers import free_port

    results = tmp_path / "results.csv"
    done = subprocess.run(
        [sys.executable, "-m", "clients.batch", str(photos), "-o", str(results)]
        + ["--endpoint", f"http://127.0.0.1:{free_port()}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == batch.EXIT_FAILED
    assert "3  connection_failed" in done.stderr and "Traceback" not in done.stderr
    assert {row["error"] for row in csv_rows(results).values()} == {"connection_failed"}


def test_a_file_that_is_not_a_results_file_is_refused(photos, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("name,size\na,1\n")
    code, err = run_batch(capsys, str(photos), "-o", str(other))
    assert code == batch.EXIT_USAGE and err.startswith("error: ") and "not a results file" in err
    assert other.read_text() == "name,size\na,1\n"


def test_a_folder_and_a_url_list_through_the_api(api_stack, photos, sample_files, tmp_path, capsys):
    """Through a real `chalice local` in front of the endpoint: the API's answers and errors."""
    files = sample_files
    results = tmp_path / "results.csv"
    listing = tmp_path / "urls.txt"
    url_results = tmp_path / "urls.jsonl"
    proxy = RecordingProxy.to(api_stack.url)
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy)) as url:
        code, err = run_batch(capsys, str(photos), "-o", str(results), "--api", url)
        listing.write_text(f"{files}/{LABRADOR}\n{files}/missing.jpg\n{files}/{SPANIEL}\n")
        url_code, url_err = run_batch(capsys, str(listing), "-o", str(url_results), "--api", url)
    # Each source went as one /predict/batch call, each item answered on its own.
    assert proxy.requests == [("/predict/batch", contract.JSON)] * 2
    rows = csv_rows(results)
    assert rows[f"labs/{LABRADOR}"]["label"] == "Labrador_retriever"
    assert rows["other/notes.txt"]["error"] == "unreadable_image"
    assert code == batch.EXIT_FAILED and "3 images: 2 classified, 1 failed" in err
    url_rows = {row["key"]: row for row in map(json.loads, url_results.read_text().splitlines())}
    assert url_rows[f"{files}/{LABRADOR}"]["label"] == "Labrador_retriever"
    assert url_rows[f"{files}/{SPANIEL}"]["label"] == rows[f"other/deeper/{SPANIEL}"]["label"]
    assert url_rows[f"{files}/missing.jpg"]["error"] == "url_fetch_failed"
    assert url_code == batch.EXIT_FAILED and "3 images: 2 classified, 1 failed" in url_err


def test_phone_photos_in_heic_and_avif_through_the_api_and_what_the_endpoint_says(
    api_stack, endpoint, samples, tmp_path, capsys
):
    root = tmp_path / "phone"
    root.mkdir()
    upright = Image.open(samples / LABRADOR).convert("RGB")
    (root / "IMG_0001.HEIC").write_bytes(as_a_phone_stores_it(upright, "HEIF"))
    (root / "IMG_0002.avif").write_bytes(as_a_phone_stores_it(upright, "AVIF"))
    code, err = run_batch(capsys, str(root), "-o", str(tmp_path / "api.csv"), "--api", api_stack.url)
    rows = csv_rows(tmp_path / "api.csv")
    assert {key: row["label"] for key, row in rows.items()} == {
        "IMG_0001.HEIC": "Labrador_retriever",
        "IMG_0002.avif": "Labrador_retriever",
    }
    assert code == 0, err
    # The endpoint decodes neither (their headers do not bound the decoding): the command converts them for
    # it, upright, as the API does.
    code, err = run_batch(capsys, str(root), "-o", str(tmp_path / "endpoint.csv"), "--endpoint", endpoint.url)
    rows = csv_rows(tmp_path / "endpoint.csv")
    assert {key: row["label"] for key, row in rows.items()} == {
        "IMG_0001.HEIC": "Labrador_retriever",
        "IMG_0002.avif": "Labrador_retriever",
    }
    assert code == 0, err


def test_heic_the_api_would_refuse_is_refused_before_it_reaches_the_endpoint(endpoint, tmp_path, capsys):
    root = tmp_path / "refused"
    root.mkdir()
    small = in_format(Image.new("RGB", (64, 64), (90, 60, 30)), "HEIF")
    (root / "claims-too-many-pixels.heic").write_bytes(claiming_size(small, 20_000, 20_000))
    # A thumbnail's header in front of a larger coded picture, which libheif would decode whole.
    hiding = in_format(Image.new("RGB", (640, 448), (90, 60, 30)), "HEIF")
    (root / "hides-a-larger-picture.heic").write_bytes(claiming_size(hiding, 64, 64))
    code, err = run_batch(capsys, str(root), "-o", str(tmp_path / "endpoint.csv"), "--endpoint", endpoint.url)
    assert code == batch.EXIT_FAILED
    rows = csv_rows(tmp_path / "endpoint.csv")
    assert {key: row["error"] for key, row in rows.items()} == {
        "claims-too-many-pixels.heic": "too_many_pixels",
        "hides-a-larger-picture.heic": "too_many_pixels",
    }


def test_bad_files_fail_with_the_same_codes_through_the_endpoint_and_the_api(
    api_stack, endpoint, samples, tmp_path, capsys
):
    """An empty file, a text file and a cut-off JPEG: the endpoint's codes, whichever way they went, one
    request or a group, and messages that read the same for a file alone as in a group."""
    root = tmp_path / "bad"
    root.mkdir()
    shutil.copy(samples / LABRADOR, root / LABRADOR)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not a photo")
    (root / "cut.jpg").write_bytes((samples / LABRADOR).read_bytes()[:2000])
    expected = {"empty.jpg": "empty_image", "notes.txt": "unreadable_image", "cut.jpg": "unreadable_image"}
    found = {}
    for target, url, size in (
        ("endpoint", endpoint.url, "4"),
        ("endpoint", endpoint.url, "1"),
        ("api", api_stack.url, "10"),
        ("api", api_stack.url, "1"),
    ):
        results = tmp_path / f"{target}-{size}.csv"
        code, _ = run_batch(capsys, str(root), "-o", str(results), f"--{target}", url, "-b", size)
        rows = csv_rows(results)
        assert code == batch.EXIT_FAILED
        assert rows[LABRADOR]["label"] == "Labrador_retriever" and rows[LABRADOR]["confident"] in (
            "True",
            "False",
        )
        found[(target, size)] = {key: rows[key]["error"] for key in expected}
        for key in expected:
            assert rows[key]["message"] and not rows[key]["message"].startswith("instance"), rows[key]
    assert all(codes == expected for codes in found.values()), found


def test_a_results_file_without_the_confident_column_is_resumed_and_rewritten(
    endpoint, photos, tmp_path, capsys
):
    results = tmp_path / "earlier.csv"
    earlier = [column for column in batch_results.COLUMNS if column != "confident"]
    lab = {
        "key": f"labs/{LABRADOR}",
        "label": "Labrador_retriever",
        "breed": "Labrador retriever",
        "probability": "0.9",
        "is_dog": "True",
        "dog_probability": "0.99",
        "error": "",
        "message": "",
    }
    failed = {
        **{column: "" for column in earlier},
        "key": "other/notes.txt",
        "error": "http_503",
        "message": "busy",
    }
    with results.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=earlier)
        writer.writeheader()
        writer.writerows([lab, failed])
    code, err = run_batch(capsys, str(photos), "-o", str(results), "--endpoint", endpoint.url)
    assert "3 images, 1 already done, 2 to classify" in err
    with results.open(newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert reader.fieldnames == batch_results.COLUMNS
    assert [row["key"] for row in rows] == [f"labs/{LABRADOR}", "other/notes.txt", f"other/deeper/{SPANIEL}"]
    assert rows[0]["confident"] == "" and rows[1]["error"] == "unreadable_image"
    assert rows[2]["confident"] in ("True", "False")


def test_an_asynchronous_stage_queues_each_image_and_the_rows_say_where(photos, tmp_path, capsys):
    """A real `chalice local` as an async stage whose S3 and SageMaker runtime are a real moto_server: the
    batch route is refused, so each image goes alone and is queued; its row says where the answer will be."""
    with async_stage(tmp_path / "project") as stage:
        results = tmp_path / "results.csv"
        proxy = RecordingProxy.to(stage.api.url)
        with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy)) as url:
            code, err = run_batch(capsys, str(photos), "-o", str(results), "--api", url)
        queued_photos = stage.s3.list_objects_v2(Bucket="queued-photos", Prefix="in/").get("KeyCount", 0)
    assert [path for path, _ in proxy.requests] == ["/predict/batch"] + ["/predict/image"] * 3
    rows = csv_rows(results)
    queued = rows[f"labs/{LABRADOR}"]
    assert queued["error"] == "queued" and "its answer will be at s3://" in queued["message"]
    assert rows[f"other/deeper/{SPANIEL}"]["error"] == "queued"
    assert rows["other/notes.txt"]["error"] == "unreadable_image"
    assert queued_photos == 2
    assert code == batch.EXIT_FAILED and "2  queued" in err


@pytest.mark.slow
def test_batch_benchmark_runs_and_prints_its_figures(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.batch_speed",
            "--model-dir",
            "models/fast",
            "--limit",
            "12",
            "--seconds",
            "1",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"batch command, 1 image per request, 1 at a time: +[\d.]+ images/s", result.stdout)
    assert re.search(
        r"defaults / sequential: [\d.]+x; defaults / endpoint at 16 clients: [\d.]+x", result.stdout
    )


class RecordingProxy(http.server.BaseHTTPRequestHandler):
    """Passes requests on to the real endpoint or API, and their answers back as they are, recording each
    request's path and content type; with `throttle` set it first answers each distinct body 429 with
    Retry-After, as API Gateway throttles."""

    target = ""
    throttle = False
    seen: set[str] = set()
    throttled = 0
    requests: list[tuple[str, str]] = []  # (path, content type) of each request passed on

    @classmethod
    def to(cls, target: str, throttle: bool = False) -> type[RecordingProxy]:
        fields = {"target": target, "throttle": throttle, "seen": set(), "throttled": 0, "requests": []}
        return type("Proxy", (cls,), fields)

    @classmethod
    def content_types(cls) -> list[str]:
        return [content_type for _, content_type in cls.requests]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        photo = hashlib.sha256(body).hexdigest()
        if self.throttle and photo not in self.seen:
            self.seen.add(photo)
            type(self).throttled += 1
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.requests.append((self.path, self.headers["Content-Type"]))
        forwarded = urllib.request.Request(
            self.target + self.path, data=body, headers=dict(self.headers), method="POST"
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=60) as answer:
                status, data = answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            status, data = refused.code, refused.read()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_throttled_requests_are_retried_as_retry_after_asks(endpoint, photos, tmp_path, capsys):
    proxy = RecordingProxy.to(endpoint.url, throttle=True)
    results = tmp_path / "results.csv"
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy)) as url:
        code, err = run_batch(capsys, str(photos), "-o", str(results), "--endpoint", url)
    # The three files went as one JSON batch: throttled once, then answered.
    assert proxy.throttled == 1 and proxy.content_types() == [contract.JSON]
    assert csv_rows(results)[f"labs/{LABRADOR}"]["label"] == "Labrador_retriever"
    assert "3 images: 2 classified, 1 failed" in err and "unreadable_image" in err


def test_groups_of_images_answer_as_one_image_per_request_does(endpoint, photos, dogs, tmp_path, capsys):
    for path in sorted((dogs / "valid").rglob("*.jpg"))[::400]:
        shutil.copy(path, photos / path.name)
    files = sum(1 for path in photos.rglob("*") if path.is_file() and not path.name.startswith("."))
    rows = {}
    for size in ("1", "3"):
        proxy = RecordingProxy.to(endpoint.url)
        results = tmp_path / f"results-{size}.csv"
        with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy)) as url:
            code, err = run_batch(capsys, str(photos), "-o", str(results), "--endpoint", url, "-b", size)
        assert code == batch.EXIT_FAILED and f"{files} images: {files - 1} classified, 1 failed" in err
        rows[size] = csv_rows(results)
        expected = [contract.X_IMAGE] * files if size == "1" else [contract.JSON] * -(-files // 3)
        assert proxy.content_types() == expected
    assert rows["1"].keys() == rows["3"].keys()
    for key, single in rows["1"].items():
        grouped = rows["3"][key]
        assert (grouped["label"], grouped["is_dog"], grouped["error"]) == (
            single["label"],
            single["is_dog"],
            single["error"],
        )
        if not single["error"]:
            assert float(grouped["probability"]) == pytest.approx(float(single["probability"]), abs=1e-4)
    assert rows["3"]["other/notes.txt"]["error"] == "unreadable_image"


def test_a_group_refused_as_a_whole_is_sent_again_one_image_per_request(endpoint, samples, tmp_path, capsys):
    """Three pictures of 36 MP each pass the endpoint's per-image cap but not its per-request one."""
    from PIL import Image

    side = 6000
    assert side * side <= contract.MAX_IMAGE_PIXELS and 3 * side * side > contract.MAX_REQUEST_PIXELS
    folder = tmp_path / "big"
    folder.mkdir()
    shutil.copy(samples / LABRADOR, folder / LABRADOR)
    for index, colour in enumerate(["white", "grey", "black"]):
        Image.new("RGB", (side, side), colour).save(folder / f"plain-{index}.png")
    proxy = RecordingProxy.to(endpoint.url)
    results = tmp_path / "results.csv"
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy)) as url:
        code, err = run_batch(capsys, str(folder), "-o", str(results), "--endpoint", url)
    assert code == 0 and "4 images: 4 classified, 0 failed" in err
    assert proxy.content_types() == [contract.JSON] + [contract.X_IMAGE] * 4
    assert csv_rows(results)[LABRADOR]["label"] == "Labrador_retriever"


def test_groups_fit_the_targets_limits():
    def loaded(size: int) -> batch.Loaded:
        return batch.Loaded(batch.Item(f"{size}"), b"x" * size)

    endpoint = batch.Client("http://127.0.0.1:1", 1, api=False)
    big = batch.MAX_BODY_BYTES // 2  # its base64 is two thirds of the body
    sizes = [
        [len(each.data) for each in group]
        for group in batch.groups_of(endpoint, [loaded(10), loaded(big), loaded(big), loaded(10)], 4)
    ]
    assert sizes == [[10, big], [big, 10]]
    # What cannot share a request goes alone, as a single image with its own limits.
    assert [len(group) for group in batch.groups_of(endpoint, [loaded(batch.MAX_BODY_BYTES)] * 2, 4)] == [
        1,
        1,
    ]
    assert [len(group) for group in batch.groups_of(endpoint, [loaded(1)] * 100, 100)] == [
        batch.MAX_INSTANCES,
        36,
    ]

    api = batch.Client("http://127.0.0.1:1", 1, api=True)
    urls = [
        batch.Loaded(batch.Item(f"http://x/{index}", url=f"http://x/{index}"), None) for index in range(25)
    ]
    assert [len(group) for group in batch.groups_of(api, urls, 100)] == [10, 10, 5]
    half = batch.MAX_UPLOAD_BYTES // 2
    assert [len(group) for group in batch.groups_of(api, [loaded(half)] * 3, 10)] == [2, 1]
