"""The project folder `make run` serves the API from, so that the local stage calls the endpoint `make run`
started and resizes for the model it serves.

    python -m scripts.local_stage MODEL_DIR [SCRATCH_DIR] [--endpoint-url URL]

The local stage in .chalice/config.json carries the committed default model's MODEL_RESIZE_SIZE and the
default endpoint URL (http://127.0.0.1:8080); chalice lets a stage's environment win over the process's, so
setting AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME around `chalice local` changes nothing. When both match, this
prints the project folder itself; otherwise it writes, under SCRATCH_DIR, a project folder whose app and
chalicelib link to this one and whose local stage carries the model's own size and the given endpoint URL,
and prints that folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = ("app.py", "chalicelib", "requirements.txt")
ENDPOINT_URL = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"


def model_resize_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["preprocessing"]["resize_size"]


def local_project(model_dir: Path, scratch: Path, endpoint_url: str | None = None) -> Path:
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    environment = config["stages"]["local"]["environment_variables"]
    wanted = {"MODEL_RESIZE_SIZE": str(model_resize_size(model_dir))}
    if endpoint_url:
        wanted[ENDPOINT_URL] = endpoint_url
    if all(environment.get(name) == value for name, value in wanted.items()):
        return PROJECT
    environment.update(wanted)
    project = Path(tempfile.mkdtemp(prefix="dogbreeds-local-", dir=scratch))
    for name in SHARED:
        (project / name).symlink_to(PROJECT / name)
    (project / ".chalice").mkdir()
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    return project


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("scratch", type=Path, nargs="?", default=Path(tempfile.gettempdir()))
    parser.add_argument("--endpoint-url", help="the local endpoint's base URL (default: the local stage's)")
    args = parser.parse_args()
    print(local_project(args.model_dir, args.scratch, args.endpoint_url))


if __name__ == "__main__":
    main()
