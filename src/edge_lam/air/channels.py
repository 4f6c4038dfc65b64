"""Channel data for the air-interface example: 3GPP TR 38.901 CDL channels from ``sionna-no-rt``, made at setup.

A *draw* is one user's downlink channel over ``steps`` CSI samples ``period_s`` apart: a base station with a
uniform linear array of ``antennas`` (half-wavelength, vertical polarisation, 38.901 element pattern) to a
single-antenna user (omni), at ``subcarriers`` frequencies ``subcarrier_stride`` OFDM subcarriers apart (one per
resource block by default), centred on the carrier. Arrays are complex64, shaped ``[draw, time, antenna,
subcarrier]``, each draw normalised by sionna to unit mean power per antenna and subcarrier.

Each draw has its own user speed, uniform in ``speed_kmh``, moving horizontally in a uniform direction, and each
batch of draws its own delay spread, log-uniform in ``delay_spread_ns``. The splits: ``train``, ``val`` and
``test`` come from the training profile (CDL-C, an urban NLOS macro profile), ``zero_shot`` from a profile never
trained on (CDL-A). Every split has its own seed derived from the set's, so a set is the same on every machine
with the same sionna and torch. A predictor reads windows cut from draws (:func:`windows`) and channel *estimates*
(:func:`estimate`: the true channel plus white noise at ``snr_db``), and is scored against the true channel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SET_VERSION",
    "SPLITS",
    "ChannelSet",
    "ChannelSettings",
    "Windows",
    "estimate",
    "generate_set",
    "generate_split",
    "load_split",
    "save_split",
    "windows",
]

SET_VERSION = "1"  # bumped when the recipe changes, so a cache made by an older setup is made again
SPLITS = ("train", "val", "test", "zero_shot")
SPEED_OF_LIGHT = 299_792_458.0


@dataclass(frozen=True)
class ChannelSettings:
    """Everything that defines a channel set; its JSON goes beside the arrays."""

    antennas: int = 16
    subcarriers: int = 32
    subcarrier_spacing_hz: float = 30e3  # numerology 1
    subcarrier_stride: int = 12  # one sample per resource block: 360 kHz apart, 11.5 MHz in all
    carrier_hz: float = 3.5e9  # FR1 mid band
    period_s: float = 0.5e-3  # one slot at 30 kHz: Doppler at 120 km/h (389 Hz) stays under Nyquist (1 kHz)
    steps: int = 32  # CSI samples per draw (16 ms)
    speed_kmh: tuple[float, float] = (10.0, 120.0)
    delay_spread_ns: tuple[float, float] = (30.0, 300.0)
    profile: str = "C"  # CDL profile of train/val/test
    zero_shot_profile: str = "A"
    draws: dict[str, int] = field(default_factory=lambda: {"train": 512, "val": 128, "test": 256, "zero_shot": 256})
    batch: int = 32  # draws per sionna call; each batch has one delay spread
    seed: int = 20261201

    def profile_of(self, split: str) -> str:
        return self.zero_shot_profile if split == "zero_shot" else self.profile

    def split_seed(self, split: str) -> int:
        return self.seed + 1000 * SPLITS.index(split)

    def max_doppler_hz(self, speed_kmh: float) -> float:
        return speed_kmh / 3.6 * self.carrier_hz / SPEED_OF_LIGHT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> ChannelSettings:
        raw = json.loads(text)
        raw["speed_kmh"] = tuple(raw["speed_kmh"])
        raw["delay_spread_ns"] = tuple(raw["delay_spread_ns"])
        return ChannelSettings(**raw)


@dataclass
class ChannelSet:
    """One split: ``h`` [draw, time, antenna, subcarrier] complex64, per draw ``speed_kmh`` and ``delay_spread_ns``."""

    h: np.ndarray
    speed_kmh: np.ndarray
    delay_spread_ns: np.ndarray
    profile: str
    settings: ChannelSettings

    def __len__(self) -> int:
        return int(self.h.shape[0])

    def subset(self, count: int) -> ChannelSet:
        """The first ``count`` draws (a tiny set for tests)."""
        return ChannelSet(self.h[:count], self.speed_kmh[:count], self.delay_spread_ns[:count], self.profile,
                          self.settings)


def generate_split(settings: ChannelSettings, split: str, draws: int | None = None,
                   progress: Callable[[str], None] | None = None) -> ChannelSet:
    """Draw one split with sionna's CDL model (CPU, float32); deterministic for the settings and split."""
    import sionna.phy
    import torch
    from sionna.phy.channel import cir_to_ofdm_channel, subcarrier_frequencies
    from sionna.phy.channel.tr38901 import CDL, Antenna, PanelArray

    count = settings.draws[split] if draws is None else draws
    seed = settings.split_seed(split)
    sionna.phy.config.seed = seed
    rng = np.random.default_rng(seed)
    bs = PanelArray(num_rows_per_panel=1, num_cols_per_panel=settings.antennas, polarization="single",
                    polarization_type="V", antenna_pattern="38.901", carrier_frequency=settings.carrier_hz)
    ut = Antenna(polarization="single", polarization_type="V", antenna_pattern="omni",
                 carrier_frequency=settings.carrier_hz)
    frequencies = subcarrier_frequencies(settings.subcarriers,
                                         settings.subcarrier_spacing_hz * settings.subcarrier_stride)
    profile = settings.profile_of(split)
    h = np.empty((count, settings.steps, settings.antennas, settings.subcarriers), np.complex64)
    speeds = rng.uniform(*settings.speed_kmh, size=count).astype(np.float32)
    headings = rng.uniform(0.0, 2.0 * math.pi, size=count)
    low, high = (math.log(v) for v in settings.delay_spread_ns)
    spreads = np.empty(count, np.float32)
    for start in range(0, count, settings.batch):
        end = min(start + settings.batch, count)
        spread_ns = float(math.exp(rng.uniform(low, high)))
        speed = speeds[start:end].astype(np.float64) / 3.6
        velocity = np.stack([speed * np.cos(headings[start:end]), speed * np.sin(headings[start:end]),
                             np.zeros(end - start)], axis=-1)
        cdl = CDL(profile, spread_ns * 1e-9, settings.carrier_hz, ut, bs, "downlink",
                  ut_velocity=torch.tensor(velocity, dtype=torch.float32))
        a, tau = cdl(batch_size=end - start, num_time_steps=settings.steps,
                     sampling_frequency=1.0 / settings.period_s)
        ofdm = cir_to_ofdm_channel(frequencies, a, tau, normalize=True)  # [b, rx, rx_ant, tx, tx_ant, t, f]
        h[start:end] = ofdm[:, 0, 0, 0].numpy().transpose(0, 2, 1, 3)  # [b, antenna, t, f] -> [b, t, antenna, f]
        spreads[start:end] = spread_ns
    if progress is not None:
        progress(f"{split}: {count} CDL-{profile} draws")
    return ChannelSet(h, speeds, spreads, profile, settings)


def save_split(channel_set: ChannelSet, folder: pathlib.Path, split: str) -> pathlib.Path:
    path = folder / f"{split}.npz"
    np.savez(path, h=channel_set.h, speed_kmh=channel_set.speed_kmh, delay_spread_ns=channel_set.delay_spread_ns,
             profile=np.array(channel_set.profile))
    return path


def generate_set(folder: pathlib.Path, settings: ChannelSettings | None = None,
                 progress: Callable[[str], None] | None = None) -> str:
    """Write every split and ``settings.json`` into ``folder``; return a one-line summary."""
    import sionna

    settings = settings or ChannelSettings()
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for split in SPLITS:
        channel_set = generate_split(settings, split, progress=progress)
        total += save_split(channel_set, folder, split).stat().st_size
    (folder / "settings.json").write_text(settings.to_json() + "\n")
    (folder / "VERSION").write_text(f"edge_lam channel set {SET_VERSION}, sionna {sionna.__version__}\n")
    counts = ", ".join(f"{split} {settings.draws[split]}" for split in SPLITS)
    return (f"CDL-{settings.profile} (zero-shot CDL-{settings.zero_shot_profile}) draws: {counts}; "
            f"{settings.antennas} antennas x {settings.subcarriers} subcarriers x {settings.steps} steps of "
            f"{settings.period_s * 1e3:g} ms, {total / 1e6:.0f} MB in {time.monotonic() - started:.1f} s")


def load_split(folder: pathlib.Path, split: str) -> ChannelSet:
    """One split of a set written by :func:`generate_set`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    settings = ChannelSettings.from_json((folder / "settings.json").read_text())
    with np.load(folder / f"{split}.npz") as arrays:
        return ChannelSet(arrays["h"], arrays["speed_kmh"], arrays["delay_spread_ns"], str(arrays["profile"]),
                          settings)


@dataclass
class Windows:
    """Prediction windows: ``past`` [n, past, A, S] and ``future`` [n, future, A, S] (true channel), the draw
    each came from and its speed."""

    past: np.ndarray
    future: np.ndarray
    draw: np.ndarray
    speed_kmh: np.ndarray

    def __len__(self) -> int:
        return int(self.past.shape[0])


def windows(channel_set: ChannelSet, past: int = 16, future: int = 4, stride: int = 4) -> Windows:
    """Every window of ``past`` + ``future`` consecutive samples, starting every ``stride`` samples of each draw."""
    steps = channel_set.h.shape[1]
    if past < 1 or future < 1 or past + future > steps:
        raise ValueError(f"a window of {past} + {future} samples does not fit draws of {steps}")
    starts = range(0, steps - past - future + 1, stride)
    cut = np.stack([channel_set.h[:, s:s + past + future] for s in starts], axis=1)  # [draw, window, T, A, S]
    cut = cut.reshape(-1, *cut.shape[2:])
    draw = np.repeat(np.arange(len(channel_set)), len(starts))
    return Windows(np.ascontiguousarray(cut[:, :past]), np.ascontiguousarray(cut[:, past:]), draw,
                   channel_set.speed_kmh[draw])


def estimate(h: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Channel estimates: ``h`` plus circular white Gaussian noise ``snr_db`` below the channel's mean power."""
    if math.isinf(snr_db):
        return h.astype(np.complex64, copy=True)
    rng = np.random.default_rng(seed)
    power = float(np.mean(np.abs(h) ** 2))
    sigma = math.sqrt(power * 10 ** (-snr_db / 10) / 2)
    noise = rng.normal(0.0, sigma, size=(*h.shape, 2)).astype(np.float32)
    return (h + noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)
