"""Beam selection from a channel: a DFT codebook for the base station's linear array, the gain of each beam, the
best beams, and the spectral efficiency a chosen beam gives against the best one.

A beam ``w`` (unit norm, ``[antennas]``) sent over a downlink channel ``h`` (``[antennas, subcarriers]``: the
array's response at each subcarrier) reaches the user with gain ``|w^H h_s|^2`` on subcarrier ``s``; a beam's
gain over a window is the mean over its subcarriers and slots. The codebook is the array's oversampled DFT:
``oversample * antennas`` beams steered uniformly in ``sin(angle)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["beam_gains", "best_beams", "dft_codebook", "spectral_efficiency", "top_k_hit"]


def dft_codebook(antennas: int, oversample: int = 2) -> np.ndarray:
    """``[oversample * antennas, antennas]`` complex64 unit-norm beams of a half-wavelength uniform linear array."""
    if antennas < 1 or oversample < 1:
        raise ValueError(f"a codebook needs antennas >= 1 and oversample >= 1, got {antennas} and {oversample}")
    beams = oversample * antennas
    phase = np.outer(np.arange(beams) / beams, np.arange(antennas))  # spatial frequency of beam b, element n
    return (np.exp(2j * np.pi * phase) / np.sqrt(antennas)).astype(np.complex64)


def beam_gains(h: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Mean gain of each beam over the subcarriers (and slots): ``h`` ``[..., antennas, subcarriers]`` (or
    ``[..., time, antennas, subcarriers]`` averaged by the caller) to ``[..., beams]``."""
    if h.shape[-2] != codebook.shape[1]:
        raise ValueError(f"channel has {h.shape[-2]} antennas, the codebook {codebook.shape[1]}")
    received = np.einsum("bn,...ns->...bs", codebook.conj(), h)
    return np.mean(np.abs(received) ** 2, axis=-1)


def best_beams(window: np.ndarray, codebook: np.ndarray, k: int = 1) -> np.ndarray:
    """The ``k`` best beams (best first) of each window ``[..., time, antennas, subcarriers]``, by mean gain."""
    gains = beam_gains(window, codebook).mean(axis=-2)
    return np.argsort(-gains, axis=-1, kind="stable")[..., :k]


def top_k_hit(chosen_ranked: np.ndarray, true_best: np.ndarray) -> np.ndarray:
    """Whether the true best beam is among each row's ranked choices ``[n, k]`` (``true_best`` ``[n]``)."""
    return np.any(chosen_ranked == true_best[:, None], axis=-1)


def spectral_efficiency(window: np.ndarray, beams: np.ndarray, codebook: np.ndarray, snr_db: float) -> np.ndarray:
    """Mean ``log2(1 + snr * gain)`` bit/s/Hz of beam ``beams[i]`` over window ``i`` ``[n, time, antennas, sub]``
    (``snr_db``: the transmit SNR of a unit-gain channel)."""
    snr = 10 ** (snr_db / 10)
    received = np.einsum("in,itns->its", codebook[beams].conj(), window)
    return np.mean(np.log2(1.0 + snr * np.abs(received) ** 2), axis=(1, 2))
