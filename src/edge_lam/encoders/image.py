"""Camera messages to RGB arrays: the fields of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage``.

The functions take plain values (the node passes ``msg.encoding``, ``msg.data`` and so on), never messages, so the
encoders can be tested without ROS. Raw images are wrapped, not copied, where the layout allows it: a 640x480
frame arrives at 30 Hz and a copy per frame is wasted time on a robot's CPU. The result may therefore be a
read-only view of ``data``; copy it before writing into it.
"""

from __future__ import annotations

import array

import cv2
import numpy as np

from edge_lam.encoders.image_size import declared_size
from edge_lam.encoders.tokens import EncoderInputError

__all__ = ["MAX_PIXELS", "RAW_ENCODINGS", "ByteData", "compressed_to_rgb", "image_to_rgb", "shrink"]

# What a message's ``data`` field can arrive as (rclpy gives array.array('B') or bytes; rosbags gives an ndarray).
ByteData = bytes | bytearray | memoryview | array.array | np.ndarray

# Bytes per pixel of each raw encoding we read; the "bgr" ones are reversed, alpha is dropped, mono8 is repeated.
RAW_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


# The most pixels a frame may have unless the caller says otherwise (the camera encoder's max_image_pixels).
MAX_PIXELS = 4096 * 4096


def image_to_rgb(encoding: str, height: int, width: int, step: int, data: ByteData,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An HxWx3 uint8 RGB array from the fields of a ``sensor_msgs/Image``.

    ``data`` is anything with the buffer protocol (bytes, bytearray, memoryview, ``array.array``, a uint8 array).
    Rows may be padded (``step`` > width * channels); ``data`` must hold exactly ``step * height`` bytes, as the
    message definition says: any other length means the fields do not describe the data. For 8-bit encodings
    ``is_bigendian`` does not matter, so it is not asked for. A frame over ``max_pixels`` is refused.
    """
    key = encoding.strip().lower()
    if key not in RAW_ENCODINGS:
        raise EncoderInputError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(RAW_ENCODINGS)}"
        )
    channels = RAW_ENCODINGS[key]
    if height <= 0 or width <= 0:
        raise EncoderInputError(f"image has no pixels: {width}x{height}")
    _check_pixels(width, height, max_pixels)
    row_bytes = width * channels
    if step < row_bytes:
        raise EncoderInputError(f"step {step} is shorter than a row of {width} {encoding} pixels ({row_bytes} bytes)")
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as err:
        raise EncoderInputError(f"image data is not a byte buffer: {err}") from err
    if buffer.size != step * height:
        what = "truncated" if buffer.size < step * height else "longer than its rows"
        raise EncoderInputError(
            f"image data is {what}: {buffer.size} bytes for {height} rows of step {step} ({step * height} bytes)"
        )
    # Views all the way: the row slice drops padding and the channel index reorders, neither copies.
    pixels = buffer[: step * height].reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if channels == 1:
        return np.broadcast_to(pixels, (height, width, 3))
    return pixels[:, :, 2::-1] if key.startswith("bgr") else pixels[:, :, :3]


def compressed_to_rgb(format: str, data: ByteData, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An HxWx3 uint8 RGB array from the fields of a ``sensor_msgs/CompressedImage`` (JPEG or PNG).

    ``format`` is what image_transport writes, e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8". Its
    compressed publisher always stores true colours in the file, so the pixel order named after "compressed"
    does not change the decoding. Depth images ("compressedDepth") are not pictures and are refused. The size the
    file declares is checked against ``max_pixels`` before anything is decoded.
    """
    if "compresseddepth" in format.replace(" ", "").lower():
        raise EncoderInputError(f"compressed depth images are not supported (format {format!r})")
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as err:
        raise EncoderInputError(f"compressed image data is not a byte buffer: {err}") from err
    if buffer.size == 0:
        raise EncoderInputError(f"compressed image ({format!r}) has no data")
    try:
        width, height = declared_size(buffer.data)
    except EncoderInputError as err:
        raise EncoderInputError(f"cannot decode {buffer.size} bytes of compressed image data (format {format!r}): "
                                f"{err}") from None
    if width == 0 or height == 0:
        raise EncoderInputError(f"compressed image declares no pixels: {width}x{height}")
    _check_pixels(width, height, max_pixels)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise EncoderInputError(f"cannot decode {buffer.size} bytes of compressed image data: {err}") from None
    if bgr is None or bgr.size == 0:
        raise EncoderInputError(f"cannot decode {buffer.size} bytes of compressed image data (format {format!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise EncoderInputError(f"image of {width}x{height} has more than max_image_pixels={max_pixels} pixels")


def shrink(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an HxWx3 frame with area averaging, without copying the views ``image_to_rgb`` returns first.

    OpenCV copies any array whose pixels are not packed before it resizes; for a bgr8 view (channels reversed) or
    a mono8 view (one channel repeated) that copy costs more than the resize. Resizing the packed data underneath
    and reordering the small result is the same picture for a fraction of the time.
    """
    size = (width, height)
    if frame.shape[:2] == (height, width):
        return frame
    if frame.strides[2] == 0:  # mono8: one channel, seen three times
        return np.repeat(cv2.resize(frame[:, :, 0], size, interpolation=cv2.INTER_AREA)[:, :, None], 3, axis=2)
    if frame.strides[2] < 0 and frame[:, :, ::-1].strides[1] == 3:  # bgr8 seen as RGB
        return cv2.resize(frame[:, :, ::-1], size, interpolation=cv2.INTER_AREA)[:, :, ::-1]
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
