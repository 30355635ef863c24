"""The sizes of the pictures coded inside a HEIF or AVIF file, read from its boxes without decoding.

A HEIF/AVIF header's size (the `ispe` box) is only a claim: libheif and libavif decode each coded picture
(an HEVC or AV1 frame) at the size its own stream names, then crop or scale it to the claim. A few KB can
thus hold a 16384 x 16384 frame behind a 400 x 400 header, and decoding it costs gigabytes. The stream's
size sits in its sequence parameters: an HEVC picture's in the SPS of its `hvcC` box, an AV1 picture's in the
sequence header OBU that starts its item's data (found through `iinf` and `iloc`).

Reading the items also refuses an item description that is not text: pi-heif turns the item types and
content types it reads into Python strings without checking them, and crashes the process on one that is
not UTF-8. So this runs before the file is opened at all.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# Codings whose pictures this module cannot size: a file with any of them is not taken.
_OTHER_CODINGS = (b"avcC", b"vvcC", b"jpgC", b"uncC", b"cmpd", b"j2kH")
_HEVC_SPS = 33
_AV1_SEQUENCE_HEADER = 1


class UnreadableHeader(ValueError):
    """The file's boxes cannot be read, or hold a picture whose coded size cannot be told."""


class UnsupportedCoding(UnreadableHeader):
    """A picture coded otherwise than as HEVC or AV1 (AVC, VVC, JPEG, uncompressed...), whose size this module
    cannot tell and which the API does not take."""


def coded_sizes(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every HEVC and AV1 picture the file codes: the main picture, its tiles, its alpha.

    Raises UnsupportedCoding for a picture of another coding, UnreadableHeader when the boxes are malformed
    or name no HEVC or AV1 picture.
    """
    try:
        meta = _child(data, 0, len(data), b"meta")
        if meta is None:
            raise UnreadableHeader("no meta box")
        meta_start, meta_end = meta[0] + 4, meta[1]  # a full box: version and flags first
        iprp = _child(data, meta_start, meta_end, b"iprp")
        ipco = _child(data, *iprp, b"ipco") if iprp else None
        if ipco is None:
            raise UnreadableHeader("no item properties")
        sizes = []
        for kind, start, end in _boxes(data, *ipco):
            if kind in _OTHER_CODINGS:
                raise UnsupportedCoding(f"HEIF pictures coded as {kind.decode('latin-1')} are not accepted")
            if kind == b"hvcC":
                sizes.append(_hevc_size(data[start:end]))
        item_types = _item_types(data, meta_start, meta_end)
        sizes.extend(_av1_sizes(data, meta_start, meta_end, item_types))
    except (struct.error, IndexError) as error:
        raise UnreadableHeader("the boxes end early") from error
    if not sizes:
        raise UnreadableHeader("no HEVC or AV1 picture")
    return sizes


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box from `start` to `end`."""
    while start < end:
        if end - start < 8:
            raise UnreadableHeader("a box ends early")
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise UnreadableHeader(f"the {kind!r} box overruns its parent")
        yield kind, start + header, start + size
        start += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for found, payload_start, payload_end in _boxes(data, start, end):
        if found == kind:
            return payload_start, payload_end
    return None


class _Bits:
    """An MSB-first bit reader, as HEVC and AV1 syntax is written."""

    def __init__(self, data: bytes):
        self.data = data
        self.position = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.data[self.position >> 3]
            value = (value << 1) | ((byte >> (7 - (self.position & 7))) & 1)
            self.position += 1
        return value

    def skip(self, count: int) -> None:
        self.position += count

    def exp_golomb(self) -> int:
        """ue(v) in HEVC."""
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros > 31:
                raise UnreadableHeader("a malformed number")
        return (1 << zeros) - 1 + self.read(zeros)

    def uvlc(self) -> int:
        """uvlc() in AV1."""
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return (1 << zeros) - 1 + self.read(zeros)


# --- HEVC ---


def _hevc_size(config: bytes) -> tuple[int, int]:
    """pic_width/height_in_luma_samples of the SPS in an HEVCDecoderConfigurationRecord."""
    position = 22
    arrays = config[position]
    position += 1
    for _ in range(arrays):
        nal_type = config[position] & 0x3F
        (count,) = struct.unpack_from(">H", config, position + 1)
        position += 3
        for _ in range(count):
            (length,) = struct.unpack_from(">H", config, position + 0)
            nal = config[position + 2 : position + 2 + length]
            position += 2 + length
            if nal_type == _HEVC_SPS:
                return _sps_size(nal)
    raise UnreadableHeader("an HEVC picture without its sequence parameters")


def _sps_size(nal: bytes) -> tuple[int, int]:
    # Emulation prevention: 00 00 03 stands for 00 00 inside a NAL unit.
    bits = _Bits(nal[2:].replace(b"\x00\x00\x03", b"\x00\x00"))  # after the 2-byte NAL unit header
    bits.skip(4)  # sps_video_parameter_set_id
    sub_layers = bits.read(3)  # sps_max_sub_layers_minus1
    bits.skip(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level(1, sps_max_sub_layers_minus1): the general profile (88 bits) and level (8 bits).
    bits.skip(96)
    present = [(bits.read(1), bits.read(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.skip(2 * (8 - sub_layers))
    for profile_present, level_present in present:
        bits.skip(88 * profile_present + 8 * level_present)
    bits.exp_golomb()  # sps_seq_parameter_set_id
    if bits.exp_golomb() == 3:  # chroma_format_idc
        bits.skip(1)  # separate_colour_plane_flag
    return bits.exp_golomb(), bits.exp_golomb()


# --- items ---


def _item_types(data: bytes, meta_start: int, meta_end: int) -> dict[int, bytes]:
    """Item id -> item type, from `iinf`; raises UnreadableHeader for a type, name or content type that is
    not text."""
    iinf = _child(data, meta_start, meta_end, b"iinf")
    if iinf is None:
        raise UnreadableHeader("no item information")
    types = {}
    version = data[iinf[0]]
    first = iinf[0] + 4 + (2 if version == 0 else 4)  # version, flags, entry count
    for kind, start, end in _boxes(data, first, iinf[1]):
        if kind != b"infe" or data[start] < 2:
            continue
        id_size = 2 if data[start] == 2 else 4
        item_id = int.from_bytes(data[start + 4 : start + 4 + id_size], "big")
        type_at = start + 4 + id_size + 2  # after the protection index
        item_type = data[type_at : type_at + 4]
        # The name, then (for "mime" and "uri " items) content type, encoding or URI: nul-ended strings.
        texts = data[type_at + 4 : end].split(b"\0")
        if not all(32 <= byte < 127 for byte in item_type) or not _all_utf8(texts):
            raise UnreadableHeader("an item described by bytes that are not text")
        types[item_id] = item_type
    return types


def _all_utf8(texts: list[bytes]) -> bool:
    try:
        for text in texts:
            text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- AV1 ---


def _av1_sizes(
    data: bytes, meta_start: int, meta_end: int, item_types: dict[int, bytes]
) -> list[tuple[int, int]]:
    """The max_frame_width/height of the sequence header that starts each `av01` item's data."""
    av1_items = {item_id for item_id, item_type in item_types.items() if item_type == b"av01"}
    if not av1_items:
        return []
    locations = _item_locations(data, meta_start, meta_end)
    sizes = []
    for item_id in av1_items:
        if item_id not in locations:
            raise UnreadableHeader("an AV1 picture without its data")
        sizes.append(_av1_sequence_size(locations[item_id]))
    return sizes


def _item_locations(data: bytes, meta_start: int, meta_end: int) -> dict[int, bytes]:
    """Each item's first extent (up to a few hundred bytes: enough for its first OBUs), from `iloc`."""
    iloc = _child(data, meta_start, meta_end, b"iloc")
    idat = _child(data, meta_start, meta_end, b"idat")
    if iloc is None:
        raise UnreadableHeader("no item locations")
    position, end = iloc
    version = data[position]
    position += 4
    offset_size, length_size = data[position] >> 4, data[position] & 15
    base_offset_size, index_size = data[position + 1] >> 4, data[position + 1] & 15
    position += 2
    count_size = 2 if version < 2 else 4
    count = int.from_bytes(data[position : position + count_size], "big")
    position += count_size

    def number(size: int) -> int:
        nonlocal position
        # Past the box's end is a malformed count, which would otherwise loop on zeros.
        if position + size > end:
            raise UnreadableHeader("the item locations end early")
        value = int.from_bytes(data[position : position + size], "big")
        position += size
        return value

    locations = {}
    for _ in range(count):
        item_id = number(count_size)
        method = number(2) & 15 if version in (1, 2) else 0
        number(2)  # data_reference_index
        base = number(base_offset_size)
        extents = number(2)
        first = None
        for _ in range(extents):
            if version in (1, 2):
                number(index_size)
            offset, length = base + number(offset_size), number(length_size)
            if first is None:
                first = (offset, length)
        if first is None:
            continue
        offset, length = first
        source = data if method == 0 else data[idat[0] : idat[1]] if method == 1 and idat else b""
        locations[item_id] = source[offset : offset + min(length or len(source), 512)]
    return locations


def _av1_sequence_size(payload: bytes) -> tuple[int, int]:
    position = 0
    while position < len(payload):
        header = payload[position]
        obu_type = (header >> 3) & 15
        position += 2 if header & 4 else 1  # the extension byte
        if not header & 2:
            raise UnreadableHeader("an AV1 picture whose units have no sizes")
        size, shift = 0, 0
        while True:  # leb128
            byte = payload[position]
            position += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80 or shift > 56:
                break
        if obu_type == _AV1_SEQUENCE_HEADER:
            return _sequence_header_size(_Bits(payload[position : position + size]))
        position += size
    raise UnreadableHeader("an AV1 picture without its sequence header")


def _sequence_header_size(bits: _Bits) -> tuple[int, int]:
    bits.skip(4)  # seq_profile, still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.skip(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if bits.read(1):  # timing_info_present_flag
            bits.skip(64)  # num_units_in_display_tick, time_scale
            if bits.read(1):  # equal_picture_interval
                bits.uvlc()
            decoder_model_info = bool(bits.read(1))
            if decoder_model_info:
                buffer_delay_length = bits.read(5) + 1
                bits.skip(32 + 5 + 5)
        initial_display_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.skip(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.skip(1)  # seq_tier
            if decoder_model_info and bits.read(1):
                bits.skip(2 * buffer_delay_length + 1)
            if initial_display_delay and bits.read(1):
                bits.skip(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1
