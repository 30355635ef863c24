"""The project folder `make run` serves the API from, so that the local stage resizes for the model it serves.

    python -m scripts.local_stage MODEL_DIR [SCRATCH_DIR]

The local stage in .chalice/config.json carries the committed default model's MODEL_RESIZE_SIZE (chalice
lets a stage's environment win over the process's). For that model this prints the project folder itself;
for another it writes, under SCRATCH_DIR, a project folder whose app and chalicelib link to this one and
whose local stage carries the model's own size, and prints that folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = ("app.py", "chalicelib", "requirements.txt")


def model_resize_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["preprocessing"]["resize_size"]


def local_project(model_dir: Path, scratch: Path) -> Path:
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    environment = config["stages"]["local"]["environment_variables"]
    size = str(model_resize_size(model_dir))
    if environment.get("MODEL_RESIZE_SIZE") == size:
        return PROJECT
    environment["MODEL_RESIZE_SIZE"] = size
    project = Path(tempfile.mkdtemp(prefix="dogbreeds-local-", dir=scratch))
    for name in SHARED:
        (project / name).symlink_to(PROJECT / name)
    (project / ".chalice").mkdir()
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    return project


if __name__ == "__main__":
    scratch = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.gettempdir())
    print(local_project(Path(sys.argv[1]), scratch))
