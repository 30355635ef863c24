"""Image files made for the tests: whatever Pillow writes, HEICs as libheif and as an iPhone writes them, and
files whose header claims another size than they hold (PNGs assembled chunk by chunk, HEIF/AVIF patched)."""

from __future__ import annotations

import io
import struct
import zlib

import pillow_heif
from PIL import Image


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def heic(image: Image.Image, **options) -> bytes:
    """`image` as a HEIC, written by libheif (pillow-heif: the API's pi-heif only reads)."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, format="HEIF", **options)
    return buffer.getvalue()


def in_format(image: Image.Image, format: str, **options) -> bytes:
    return heic(image, **options) if format == "HEIF" else encoded(image, format, **options)


def as_a_phone_stores_it(upright: Image.Image, format: str) -> bytes:
    """`upright` as a phone camera held upright writes it: the sensor's pixels, a quarter turn off, with EXIF
    orientation 6 and the file's own rotation (HEIF's irot box, which AVIF has too) that turn them back. A
    HEIC is a grid of tiles, as an iPhone writes it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    if format == "HEIF":
        data = grid_heic(stored, tile=256, quarter_turns=3, exif=exif.tobytes())
    else:
        data = encoded(stored, format, exif=exif.tobytes())
    assert b"irot" in data
    return data


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, flags: int, payload: bytes, version: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags) + payload)


def _box_in(data: bytes, kind: bytes) -> bytes:
    """The first `kind` box of `data`, header included."""
    at = data.index(kind) - 4
    return data[at : at + struct.unpack_from(">I", data, at)[0]]


def grid_heic(
    stored: Image.Image,
    tile: int,
    quarter_turns: int = 0,
    exif: bytes | None = None,
    shown: tuple[int, int] | None = None,
) -> bytes:
    """A HEIC laid out as an iPhone's: the picture (`stored`, as the sensor saw it) cut into `tile`-square
    HEVC tiles that a `grid` item puts together and turns `quarter_turns` x 90 degrees anticlockwise (irot),
    with an Exif item. `shown` makes the header show another size than `stored`'s (the tiles stay)."""
    width, height = shown or stored.size
    columns, rows = -(-stored.width // tile), -(-stored.height // tile)
    configs, tiles = [], []
    for row in range(rows):
        for column in range(columns):
            part = stored.crop((column * tile, row * tile, (column + 1) * tile, (row + 1) * tile))
            # Without Pillow's info (its EXIF), so that the file's only item is the tile's picture.
            single = heic(Image.frombytes("RGB", part.size, part.tobytes()))
            configs.append(_box_in(single, b"hvcC"))
            tiles.append(_box_in(single, b"mdat")[8:])
    grid = struct.pack(">BBBBHH", 0, 0, rows - 1, columns - 1, width, height)
    # Item 1 is the grid, 2.. the tiles, then the Exif (its data: the offset of the TIFF header, then it).
    items = [(b"grid", grid), *((b"hvc1", data) for data in tiles)]
    if exif is not None:
        tiff_header = max(exif.find(b"II*\0"), exif.find(b"MM\0*"))
        items.append((b"Exif", struct.pack(">I", tiff_header) + exif))
    infe = b"".join(
        _full_box(b"infe", int(kind == b"hvc1"), struct.pack(">HH4s", number, 0, kind) + b"\0", version=2)
        for number, (kind, _) in enumerate(items, 1)
    )
    # Properties, numbered from 1: the tiles' size, the grid's size, its rotation, then each tile's hvcC.
    ispe = [_full_box(b"ispe", 0, struct.pack(">II", *size)) for size in ((tile, tile), (width, height))]
    properties = b"".join([*ispe, _box(b"irot", bytes([quarter_turns])), *configs])
    associations = struct.pack(">HBBB", 1, 2, 0x02, 0x83) + b"".join(
        struct.pack(">HBBB", number, 2, 0x80 | (3 + number - 1), 0x01) for number in range(2, len(tiles) + 2)
    )
    references = _box(
        b"dimg",
        struct.pack(">HH", 1, len(tiles))
        + b"".join(struct.pack(">H", number) for number in range(2, len(tiles) + 2)),
    )
    if exif is not None:
        references += _box(b"cdsc", struct.pack(">HHH", len(items), 1, 1))
    iprp = _box(
        b"iprp",
        _box(b"ipco", properties) + _full_box(b"ipma", 0, struct.pack(">I", len(tiles) + 1) + associations),
    )

    def meta(offsets: list[int]) -> bytes:
        locations = b"".join(
            struct.pack(">HHHII", number, 0, 1, offset, len(data))
            for number, offset, (_, data) in zip(range(1, len(items) + 1), offsets, items, strict=True)
        )
        return _full_box(
            b"meta",
            0,
            _full_box(b"hdlr", 0, b"\0" * 4 + b"pict" + b"\0" * 13)
            + _full_box(b"pitm", 0, struct.pack(">H", 1))
            + _full_box(b"iloc", 0, bytes([0x44, 0x00]) + struct.pack(">H", len(items)) + locations)
            + _full_box(b"iinf", 0, struct.pack(">H", len(items)) + infe)
            + _full_box(b"iref", 0, references)
            + iprp,
        )

    head = _box(b"ftyp", b"heic" + b"\0" * 4 + b"mif1heic")
    offsets = [len(head) + len(meta([0] * len(items))) + 8]
    for _, data in items[:-1]:
        offsets.append(offsets[-1] + len(data))
    return head + meta(offsets) + _box(b"mdat", b"".join(data for _, data in items))


def claiming_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIF or AVIF file whose header (every `ispe` box: the size of the picture) claims width x height;
    what it holds is unchanged."""
    patched = bytearray(data)
    found = 0
    while (at := patched.find(b"ispe", found)) >= 0:
        # After the box type: version and flags (4 bytes), then width and height (4 bytes each).
        struct.pack_into(">II", patched, at + 8, width, height)
        found = at + 4
    assert found, "no ispe box"
    return bytes(patched)


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
