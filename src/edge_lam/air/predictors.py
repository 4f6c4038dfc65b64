"""What every channel predictor is to the bench and the node: past CSI windows in, the next slots' CSI out.

``predict`` takes channel estimates ``[n, past, antennas, subcarriers]`` (complex64) and returns the predicted
channel ``[n, future, antennas, subcarriers]``. :class:`LastCsi` is the reference every predictor must beat: it
repeats the newest estimate (what a base station does that uses its last report as is). :func:`nmse_db` is the
score, per window, against the true channel.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["ChannelPredictor", "LastCsi", "nmse", "nmse_db"]


class ChannelPredictor(Protocol):
    name: str
    past: int
    future: int

    def predict(self, past: np.ndarray) -> np.ndarray: ...


class LastCsi:
    """No prediction: every future slot is the newest estimate."""

    name = "last"

    def __init__(self, past: int = 16, future: int = 4) -> None:
        self.past, self.future = past, future

    def predict(self, past: np.ndarray) -> np.ndarray:
        return np.repeat(past[:, -1:], self.future, axis=1).astype(np.complex64)


def nmse(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per window ``[n]``: squared error over its slots, antennas and subcarriers, over the true channel's energy."""
    axes = tuple(range(1, true.ndim))
    return np.sum(np.abs(predicted - true) ** 2, axis=axes) / np.sum(np.abs(true) ** 2, axis=axes)


def nmse_db(predicted: np.ndarray, true: np.ndarray) -> float:
    """NMSE of a set of windows in dB: the mean of the per-window NMSE (the convention of the CSI literature)."""
    return float(10 * np.log10(np.mean(nmse(predicted, true))))
