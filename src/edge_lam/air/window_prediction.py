"""One CSI window to the channel predictor's answer: the next slots' channel and the beams ranked for it.

The pure core of the ``channel_predictor`` node, the same for every predictor kind: the window's newest
``predictor.past`` slots go in, the predicted ``[future, antennas, subcarriers]`` comes out, and the beams of an
oversampled DFT codebook are ranked by their mean gain over the predicted slots and subcarriers.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from edge_lam.air.beams import beam_gains, dft_codebook
from edge_lam.air.predictors import ChannelPredictor
from edge_lam.encoders.tokens import EncoderInputError

__all__ = ["WindowPrediction", "codebook", "predict_window"]


@dataclasses.dataclass
class WindowPrediction:
    predicted: np.ndarray  # [future, antennas, subcarriers] complex64
    top_beams: np.ndarray  # [k], best first
    top_gains: np.ndarray  # [k], mean predicted gain of each


@functools.lru_cache(maxsize=8)
def codebook(antennas: int, oversample: int) -> np.ndarray:
    return dft_codebook(antennas, oversample)


def predict_window(predictor: ChannelPredictor, h: np.ndarray, oversample: int, top_k: int) -> WindowPrediction:
    """EncoderInputError when the window has fewer slots than the predictor reads."""
    if h.ndim != 3:
        raise EncoderInputError(f"a CSI window is [time, antennas, subcarriers], got shape {list(h.shape)}")
    if h.shape[0] < predictor.past:
        raise EncoderInputError(f"the window has {h.shape[0]} slots, the {predictor.name} predictor reads "
                                f"{predictor.past}")
    predicted = np.asarray(predictor.predict(h[None, -predictor.past:]))[0].astype(np.complex64, copy=False)
    if predicted.shape != (predictor.future, *h.shape[1:]):
        raise ValueError(f"the {predictor.name} predictor returned {list(predicted.shape)}, expected "
                         f"{[predictor.future, *h.shape[1:]]}")
    gains = beam_gains(predicted, codebook(h.shape[1], oversample)).mean(axis=0)
    ranked = np.argsort(-gains, kind="stable")[:top_k]
    return WindowPrediction(predicted, ranked, gains[ranked].astype(np.float32))
