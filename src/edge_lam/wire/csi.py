"""Channel estimates to and from ``edge_lam_msgs/ChannelState``: numpy complex64 ``[time, antennas, subcarriers]``
and the message's row-major ``real`` / ``imag`` float32 arrays, checked on the way in.

A window that the message cannot describe (not three sizes, sizes that disagree with the arrays, NaN or infinite
values, more than :data:`MAX_CSI_VALUES` values, a spacing or period that is not a positive time) is refused with
an ``EncoderInputError`` saying why, for the node to log and drop. The same functions read rclpy's messages and
those rosbags deserialises from a bag.
"""

from __future__ import annotations

import array
import dataclasses
import math
from typing import Any

import numpy as np
from edge_lam_msgs.msg import ChannelState
from std_msgs.msg import Header

from edge_lam.encoders.tokens import EncoderInputError

__all__ = ["MAX_CSI_DIM", "MAX_CSI_VALUES", "CsiWindow", "from_channel_state", "to_channel_state"]

# A 5G NR carrier has at most 3300 subcarriers and base stations a few hundred antenna ports: 2^22 complex values
# (32 MB as float32) holds any real window, and bounds what one bad message can make a node allocate.
MAX_CSI_VALUES = 1 << 22
MAX_CSI_DIM = 1 << 16  # of each of time, antennas, subcarriers


@dataclasses.dataclass
class CsiWindow:
    """One message's contents: ``h`` [time, antennas, subcarriers] complex64 and what its axes mean."""

    h: np.ndarray
    link_id: str
    carrier_hz: float
    subcarrier_spacing_hz: float
    period_s: float
    noise_variance: float = 0.0


def to_channel_state(window: CsiWindow, header: Header | None = None) -> ChannelState:
    """The message of ``window`` (checked as :func:`from_channel_state` checks a message)."""
    h = np.asarray(window.h)
    _check_shape(h.shape)
    values = np.ascontiguousarray(h, dtype=np.complex64)
    if not np.all(np.isfinite(values)):
        raise EncoderInputError("CSI values must be finite (no NaN or infinity)")
    _check_axes(window.carrier_hz, window.subcarrier_spacing_hz, window.period_s, window.noise_variance)
    msg = ChannelState(header=header or Header(), link_id=window.link_id, carrier_hz=float(window.carrier_hz),
                       subcarrier_spacing_hz=float(window.subcarrier_spacing_hz), period_s=float(window.period_s),
                       noise_variance=float(window.noise_variance))
    msg.shape = array.array("I", np.asarray(values.shape, dtype="<u4").tobytes())
    msg.real = array.array("f", np.ascontiguousarray(values.real, dtype="<f4").tobytes())
    msg.imag = array.array("f", np.ascontiguousarray(values.imag, dtype="<f4").tobytes())
    return msg


def from_channel_state(msg: Any) -> CsiWindow:
    """The window a message holds; EncoderInputError when it is malformed (see the module's docstring)."""
    shape = tuple(int(n) for n in msg.shape)
    _check_shape(shape)
    count = math.prod(shape)
    if len(msg.real) != count or len(msg.imag) != count:
        raise EncoderInputError(
            f"shape {list(shape)} holds {count} values, the message has {len(msg.real)} real and {len(msg.imag)} "
            "imaginary parts")
    _check_axes(msg.carrier_hz, msg.subcarrier_spacing_hz, msg.period_s, msg.noise_variance)
    real = np.asarray(msg.real, dtype=np.float32)
    imag = np.asarray(msg.imag, dtype=np.float32)
    if not (np.all(np.isfinite(real)) and np.all(np.isfinite(imag))):
        raise EncoderInputError("CSI values must be finite (no NaN or infinity)")
    h = np.empty(shape, np.complex64)
    h.real = real.reshape(shape)
    h.imag = imag.reshape(shape)
    return CsiWindow(h, str(msg.link_id), float(msg.carrier_hz), float(msg.subcarrier_spacing_hz),
                     float(msg.period_s), float(msg.noise_variance))


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise EncoderInputError(f"CSI shape must be [time, antennas, subcarriers], got {list(shape)}")
    if any(n < 1 or n > MAX_CSI_DIM for n in shape):
        raise EncoderInputError(f"CSI shape {list(shape)}: every size must be 1..{MAX_CSI_DIM}")
    if math.prod(shape) > MAX_CSI_VALUES:
        raise EncoderInputError(f"CSI shape {list(shape)} holds {math.prod(shape)} values, over the bound of "
                                f"{MAX_CSI_VALUES}")


def _check_axes(carrier_hz: float, spacing_hz: float, period_s: float, noise_variance: float) -> None:
    for name, value in (("carrier_hz", carrier_hz), ("subcarrier_spacing_hz", spacing_hz), ("period_s", period_s)):
        if not (math.isfinite(value) and value > 0):
            raise EncoderInputError(f"{name} must be a positive number, got {value}")
    if not (math.isfinite(noise_variance) and noise_variance >= 0):
        raise EncoderInputError(f"noise_variance must be >= 0 (0 = unknown), got {noise_variance}")
