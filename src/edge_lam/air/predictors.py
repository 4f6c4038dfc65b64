"""What every channel predictor is to the bench and the node: past CSI windows in, the next slots' CSI out.

``predict`` takes channel estimates ``[n, past, antennas, subcarriers]`` (complex64) and returns the predicted
channel ``[n, future, antennas, subcarriers]``. :class:`LastCsi` is the reference every predictor must beat: it
repeats the newest estimate (what a base station does that uses its last report as is). :func:`nmse_db` is the
score, per window, against the true channel.

A trained predictor is one safetensors file whose metadata says its ``kind`` (``ar``, ``gru`` or ``lam``);
:func:`load_predictor` reads any of them.
"""

from __future__ import annotations

import json
import pathlib
from typing import Protocol

import numpy as np

__all__ = ["ChannelPredictor", "LastCsi", "load_predictor", "nmse", "nmse_db", "predictor_kind"]


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


def predictor_kind(path: pathlib.Path) -> str:
    """The ``kind`` a saved predictor's safetensors metadata names."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as file:
        metadata = file.metadata() or {}
    kind = metadata.get("kind") or json.loads(metadata.get("info", "{}")).get("kind")
    if not kind:
        raise ValueError(f"{path} is not a saved channel predictor (no 'kind' in its metadata)")
    return kind


def load_predictor(kind: str, path: pathlib.Path | None = None) -> ChannelPredictor:
    """``last`` (needs no file), or the predictor saved at ``path`` (its kind must be ``kind``, or pass ``"auto"``)."""
    if kind == "last":
        return LastCsi()
    if path is None:
        raise ValueError(f"a {kind!r} predictor is loaded from a file; none given")
    saved = predictor_kind(path)
    if kind not in ("auto", saved):
        raise ValueError(f"{path} holds a {saved!r} predictor, not {kind!r}")
    if saved == "ar":
        from edge_lam.air.baselines import load_ar

        return load_ar(path)
    if saved == "gru":
        from edge_lam.air.baselines import load_gru

        return load_gru(path)
    if saved == "lam":
        from edge_lam.air.lam import load_lam

        return load_lam(path)
    raise ValueError(f"{path}: unknown predictor kind {saved!r} (known: ar, gru, lam)")
