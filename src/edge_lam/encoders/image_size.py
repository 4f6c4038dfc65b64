"""The size a PNG or JPEG file declares, read from its header without decoding it.

A decoder allocates what the header claims: an 811-byte JPEG claiming 30000x30000 made OpenCV take 5.4 GB and 11 s,
and a PNG claiming 65535x65535 made it raise. Reading the claim first lets a receiver refuse such a file for the
cost of a few byte comparisons. Only PNG and JPEG are recognised: they are what image_transport's compressed
publisher writes, and every other format a general decoder accepts is more surface for no camera.
"""

from __future__ import annotations

import struct

from edge_lam.encoders.tokens import EncoderInputError

__all__ = ["declared_size"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): they carry the size.
# C4 (DHT), C8 (JPG) and CC (DAC) sit in that range but are other segments.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and RSTn: markers without a length
_SOS = 0xDA


def declared_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) as the file's header states them; EncoderInputError for a file that is neither a PNG nor a
    JPEG, or whose header is cut short or states no size."""
    head = bytes(data[:8])
    if head == PNG_SIGNATURE:
        return _png_size(data)
    if head[:2] == JPEG_START:
        return _jpeg_size(data)
    raise EncoderInputError(f"compressed image data is neither PNG nor JPEG (starts {head.hex()})")


def _png_size(data: bytes | memoryview) -> tuple[int, int]:
    # The first chunk must be IHDR: length (4), type (4), width (4), height (4), all big-endian.
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise EncoderInputError("PNG has no IHDR header chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """Walk the segments up to the first start-of-frame (SOFn: precision, height, width), which precedes the scan."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise EncoderInputError(f"JPEG has no segment marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _SOF:
            if length < 7 or position + 9 > len(data):
                raise EncoderInputError("JPEG frame header is cut short")
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            if height == 0:  # the height would come later, in a DNL segment: refused rather than decoded to find out
                raise EncoderInputError("JPEG frame header states no height")
            return width, height
        if marker == _SOS or length < 2:
            break
        position += 2 + length
    raise EncoderInputError("JPEG has no frame header (SOFn) before its image data")
