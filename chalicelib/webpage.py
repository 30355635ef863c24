"""The web page served at `/`: one HTML document with its style and script inlined (static/), so it needs
nothing but the API beside it, in every stage. The files are read once per container."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from chalicelib.settings import JPEG_QUALITY, MAX_UPLOAD_BYTES

STATIC = Path(__file__).resolve().parent / "static"


@functools.cache
def _assets() -> tuple[str, str, str]:
    names = ("index.html", "page.css", "page.js")
    return tuple((STATIC / name).read_text(encoding="utf-8") for name in names)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def render_page(resize_size: int, upload_types: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The page's HTML and its headers; the page learns the model's resize size and the upload limits from
    here, so that it shrinks photos exactly as far as the model needs."""
    template, style, script = _assets()
    config = {
        "resize_size": resize_size,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "jpeg_quality": JPEG_QUALITY / 100,
        "upload_types": list(upload_types),
    }
    # "<" escaped: the JSON sits inside a <script> element.
    config_json = json.dumps(config).replace("<", "\\u003c")
    html = (
        template.replace("/*CONFIG*/", config_json).replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    )
    # Only this page's own style and script run; it talks to its own origin alone. Preview images of a
    # pasted address load from wherever that address points.
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "img-src 'self' blob: data: http: https:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return html, headers
