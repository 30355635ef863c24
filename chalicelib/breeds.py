"""GET /breeds: the stage's model's breeds (label and display name) and its name and version.

The Lambda ships no model files, so the endpoint answers them (serving/contract.py's BREEDS_ACCEPT), from the
model it serves: the labels and display names have one source, the model artifact and classifier.model. The
route is public, so an answer is kept for BREEDS_CACHE_S per container.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from chalicelib.errors import BreedsNotServed
from chalicelib.invoke import model_breeds
from chalicelib.settings import BREEDS_CACHE_S, get_settings

_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def breeds_answer() -> tuple[dict[str, Any], dict[str, str]]:
    """(body, headers) of GET /breeds. Raises BreedsNotServed on an asynchronous stage (its endpoint answers
    nothing synchronously) and what `model_breeds` raises."""
    settings = get_settings()
    if settings.endpoint_kind == "async":
        raise BreedsNotServed(
            f"the endpoint {settings.endpoint_name!r} is asynchronous: it answers no request synchronously; "
            "every answer it writes names its model"
        )
    with _lock:
        cached = _cache.get(settings.endpoint_name)
    if cached is None or time.monotonic() - cached[0] >= BREEDS_CACHE_S:
        cached = (time.monotonic(), model_breeds(settings.endpoint_name))
        with _lock:
            _cache[settings.endpoint_name] = cached
    # Browsers and caches may keep it as long as a container does.
    return cached[1], {"Cache-Control": f"public, max-age={int(BREEDS_CACHE_S)}"}


def clear_cache() -> None:
    with _lock:
        _cache.clear()
