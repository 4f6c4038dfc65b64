"""Channel state as tokens: a window of CSI ``[time, antennas, subcarriers]`` to three words a radio engineer
reads, and the window's patches for the LAM.

The tokens, in this order (ids index one :class:`Vocabulary`; the scores are the measured values):

- ``beam-NN``: the dominant beam of the window, the DFT codebook beam (``air.beams``) with the most mean gain;
  score: its share of the gain of all beams.
- ``delay-spread-<bucket>``: the RMS delay spread of the power delay profile (the IFFT over subcarriers, power
  summed over slots and antennas; taps past half the IFFT count as negative delays, so a tap between two bins
  leaks to both sides of zero instead of to the far end); score: the spread in ns.
- ``ageing-<bucket>``: how fast the channel changes, as a Doppler spread: the slot-to-slot correlation (its
  magnitude, so a common phase rotation does not count), corrected for the estimates' noise when the message
  gives its variance, read through Jakes' model ``rho = J0(2 pi f_D period)``; score: the Doppler in Hz.

The embedding is one row per slot, ``2 * antennas * subcarriers`` floats: the slot's CSI divided by the window's
RMS (the square root of the mean ``|h|^2``), real parts first (antenna-major, ``a * subcarriers + s``), then the
imaginary parts in the same order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_lam.air.beams import beam_gains, dft_codebook
from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

__all__ = ["CsiBins", "CsiEncoder", "CsiFeatures", "doppler_hz", "rms_delay_spread_s"]

_J0_ZERO = 2.404825557695773  # first zero of J0: Jakes' correlation is monotone up to it
_X = np.linspace(0.0, _J0_ZERO, 512)
_THETA = np.linspace(0.0, np.pi, 257)
_J0 = np.trapezoid(np.cos(_X[:, None] * np.sin(_THETA[None, :])), _THETA, axis=1) / np.pi  # J0 by its integral


@dataclasses.dataclass(frozen=True)
class CsiBins:
    """The codebook and the buckets; ``*_names`` has one more entry than ``*_edges``.

    The delay edges suit the example's 11.5 MHz (a delay bin is 87 ns; the test set's windows measure 60-160 ns);
    the Doppler edges at 3.5 GHz are about 9, 31 and 62 km/h."""

    antennas: int = 16
    oversample: int = 2
    delay_spread_edges_ns: tuple[float, ...] = (80.0, 120.0, 200.0)
    delay_spread_names: tuple[str, ...] = ("short", "medium", "long", "very-long")
    doppler_edges_hz: tuple[float, ...] = (30.0, 100.0, 200.0)
    ageing_names: tuple[str, ...] = ("static", "slow", "medium", "fast")

    def __post_init__(self) -> None:
        for edges, names, what in ((self.delay_spread_edges_ns, self.delay_spread_names, "delay spread"),
                                   (self.doppler_edges_hz, self.ageing_names, "ageing")):
            if len(names) != len(edges) + 1:
                raise ValueError(f"{what}: {len(names)} names for {len(edges)} edges (need one more name)")
            if list(edges) != sorted(edges) or any(e <= 0 for e in edges):
                raise ValueError(f"{what} edges must be positive and ascending, got {list(edges)}")
        if self.antennas < 1 or self.oversample < 1:
            raise ValueError(f"antennas and oversample must be >= 1, got {self.antennas} and {self.oversample}")


@dataclasses.dataclass(frozen=True)
class CsiFeatures:
    beam: int
    beam_share: float
    delay_spread_s: float
    doppler_hz: float


def rms_delay_spread_s(h: np.ndarray, subcarrier_spacing_hz: float) -> float:
    """RMS delay spread (s) of the power delay profile of ``h`` [..., subcarriers] (see the module's docstring)."""
    subcarriers = h.shape[-1]
    taps = np.fft.ifft(h, axis=-1)
    pdp = np.sum(np.abs(taps) ** 2, axis=tuple(range(h.ndim - 1)))
    index = np.arange(subcarriers)
    delays = np.where(index <= subcarriers // 2, index, index - subcarriers) / (subcarriers * subcarrier_spacing_hz)
    power = float(pdp.sum())
    mean = float(np.sum(pdp * delays)) / power
    return float(np.sqrt(max(float(np.sum(pdp * delays**2)) / power - mean**2, 0.0)))


def doppler_hz(h: np.ndarray, period_s: float, noise_variance: float = 0.0) -> float:
    """Doppler spread (Hz) from the slot-to-slot correlation of ``h`` [time, ...]; 0 for a single slot."""
    if h.shape[0] < 2:
        return 0.0
    lagged = np.abs(np.vdot(h[:-1], h[1:]))  # sum over slots, antennas and subcarriers of h_t^* h_{t+1}
    power = np.sqrt(np.sum(np.abs(h[:-1]) ** 2) * np.sum(np.abs(h[1:]) ** 2)) - (h.shape[0] - 1) * h[0].size * \
        noise_variance
    rho = float(np.clip(lagged / power, 0.0, 1.0)) if power > 0 else 0.0
    x = float(np.interp(-rho, -_J0, _X))  # J0 falls from 1 to 0 over _X: interpolate on the rising -J0
    return x / (2 * np.pi * period_s)


class CsiEncoder:
    """A CSI window to the three tokens and the patch embedding (see the module's docstring)."""

    def __init__(self, bins: CsiBins | None = None) -> None:
        self.bins = bins or CsiBins()
        self.codebook = dft_codebook(self.bins.antennas, self.bins.oversample)
        beams = len(self.codebook)
        width = len(str(beams - 1))
        words = [f"beam-{b:0{width}d}" for b in range(beams)]
        words += [f"delay-spread-{name}" for name in self.bins.delay_spread_names]
        words += [f"ageing-{name}" for name in self.bins.ageing_names]
        delay_edges = ",".join(f"{e:g}" for e in self.bins.delay_spread_edges_ns)
        doppler_edges = ",".join(f"{e:g}" for e in self.bins.doppler_edges_hz)
        version = (f"1; DFT codebook {self.bins.antennas} antennas x{self.bins.oversample}, delay spread edges "
                   f"{delay_edges} ns, Doppler edges {doppler_edges} Hz")  # a recording states what its words meant
        self.vocabulary = Vocabulary("csi_tokens", version, tuple(words))
        self._delay_base = beams
        self._ageing_base = beams + len(self.bins.delay_spread_names)

    def features(self, h: np.ndarray, subcarrier_spacing_hz: float, period_s: float,
                 noise_variance: float = 0.0) -> CsiFeatures:
        if h.ndim != 3:
            raise EncoderInputError(f"a CSI window is [time, antennas, subcarriers], got shape {list(h.shape)}")
        if h.shape[1] != self.bins.antennas:
            raise EncoderInputError(f"the window has {h.shape[1]} antennas, the encoder's codebook "
                                    f"{self.bins.antennas}")
        if not np.any(h):
            raise EncoderInputError("the CSI window is all zeros")
        gains = beam_gains(h, self.codebook).mean(axis=0)
        beam = int(np.argmax(gains))
        return CsiFeatures(beam, float(gains[beam] / gains.sum()), rms_delay_spread_s(h, subcarrier_spacing_hz),
                           doppler_hz(h, period_s, noise_variance))

    def encode(self, h: np.ndarray, subcarrier_spacing_hz: float, period_s: float,
               noise_variance: float = 0.0) -> Encoded:
        f = self.features(h, subcarrier_spacing_hz, period_s, noise_variance)
        delay = int(np.searchsorted(self.bins.delay_spread_edges_ns, f.delay_spread_s * 1e9, side="right"))
        ageing = int(np.searchsorted(self.bins.doppler_edges_hz, f.doppler_hz, side="right"))
        ids = np.array([f.beam, self._delay_base + delay, self._ageing_base + ageing])
        scores = np.array([f.beam_share, f.delay_spread_s * 1e9, f.doppler_hz])
        return Encoded(ids, scores=scores, embedding=patches(h))


def patches(h: np.ndarray) -> np.ndarray:
    """[time, 2 * antennas * subcarriers] float32: each slot normalised by the window's RMS, real then imaginary."""
    scaled = h / np.sqrt(np.mean(np.abs(h) ** 2))
    rows = scaled.reshape(h.shape[0], -1)
    return np.concatenate([rows.real, rows.imag], axis=1).astype(np.float32)
