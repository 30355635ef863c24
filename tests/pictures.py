"""Image files made for the tests: whatever Pillow writes, and PNGs assembled chunk by chunk so that their
header can claim any size."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png(width: int, height: int, bit_depth: int, colour_type: int, pixel_data: bytes) -> bytes:
    """A PNG file assembled chunk by chunk, so that its header can claim any size."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        checksum = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel_data) + chunk(b"IEND", b"")


def zero_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: kilobytes that decode to hundreds of megapixels."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    return png(
        width, height, 1, 0, b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    )
