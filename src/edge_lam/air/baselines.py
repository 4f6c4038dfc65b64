"""The classical channel predictors the LAM is measured against: an AR (linear, Wiener-type) predictor and a GRU.

Both read channel *estimates* (the noisy CSI a base station has) and are scored against the true channel, and both
are tuned on the validation split only, never told a window's speed:

- :class:`ArPredictor` predicts every (antenna, subcarrier) stream from its own last ``order`` estimates with one
  set of complex coefficients. ``global`` coefficients are fitted by least squares over the training windows (one
  predictor for every speed: a compromise between slow and fast users). ``adaptive`` coefficients are fitted per
  window on that window's own past, pooling its ``A * S`` streams (they share one Doppler spectrum), with a ridge
  that pulls them towards the global ones: the Wiener predictor of the window's own correlation, so the speed is
  learnt from the data, not given. Predictions are ``direct`` (one coefficient set per future slot) or recursive
  (one-step coefficients fed their own outputs). :func:`fit_ar` picks mode, order, ridge and direct/recursive on val.
- :class:`GruPredictor`: a small GRU over the slots, each slot's CSI flattened to ``2 * A * S`` real features after
  dividing the window by the RMS of its past, predicting the next slots' change from the newest estimate from its
  last hidden state. :func:`train_gru` trains it on fresh noise, carrier phases and timing offsets every batch
  (a few thousand windows would otherwise be memorised) and keeps the best state on val.

Each saves to one safetensors file with ``kind`` (``ar`` / ``gru``) and its settings JSON in the metadata;
:func:`load_ar` / :func:`load_gru` (through :func:`edge_lam.air.predictors.load_predictor`) read it back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from edge_lam.air.channels import Windows, estimate
from edge_lam.air.predictors import nmse_db

__all__ = [
    "ArPredictor",
    "ArSettings",
    "GruPredictor",
    "GruSettings",
    "fit_ar",
    "fit_ar_coefficients",
    "load_ar",
    "load_gru",
    "train_gru",
]

AR_MODES = ("global", "adaptive")


@dataclass(frozen=True)
class ArSettings:
    """One AR predictor's recipe; ``ridge`` is relative to the mean regressor power (a noise-to-signal ratio)."""

    order: int = 8
    direct: bool = False
    mode: str = "adaptive"
    ridge: float = 1e-3
    past: int = 16
    future: int = 4

    def __post_init__(self) -> None:
        if self.mode not in AR_MODES:
            raise ValueError(f"AR mode must be one of {', '.join(AR_MODES)}, not {self.mode!r}")
        if not 1 <= self.order < self.past:
            raise ValueError(f"AR order must be in 1..{self.past - 1} for a past of {self.past}, got {self.order}")
        if self.mode == "adaptive" and self.order + (self.future if self.direct else 1) > self.past:
            raise ValueError(f"an adaptive AR of order {self.order} leaves nothing to fit in a past of {self.past}")


def _regressors(streams: np.ndarray, order: int, ends: np.ndarray) -> np.ndarray:
    """``[n, len(ends), N, order]``: the ``order`` samples up to each end slot, newest first."""
    return np.stack([streams[:, ends - lag] for lag in range(order)], axis=-1)


def _ridge_solve(gram: np.ndarray, cross: np.ndarray, ridge: float, prior: np.ndarray | None) -> np.ndarray:
    """Solve ``(G + r I) w = b + r w0`` for each leading index, ``r`` = ridge times the mean diagonal of ``G``."""
    order = gram.shape[-1]
    scale = ridge * np.trace(gram, axis1=-2, axis2=-1).real / order
    lhs = gram + scale[..., None, None] * np.eye(order, dtype=gram.dtype)
    rhs = cross if prior is None else cross + scale[..., None, None] * prior
    return np.linalg.solve(lhs, rhs)


def _normal_equations(past: np.ndarray, future: np.ndarray | None, order: int, horizons: int,
                      per_window: bool) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares normal equations ``G`` [(n,) horizons, order, order] and ``b`` [(n,) horizons, order, 1] of
    predicting each stream ``1..horizons`` slots ahead from its last ``order`` samples, in windows ``past``
    [n, P, A, S].

    With ``future`` (the true next slots) the targets are those, from the end of the past; without, the targets are
    later slots of the past itself (a window fitting itself). ``per_window`` keeps one fit per window, else one
    over all windows.
    """
    n, length = past.shape[:2]
    streams = past.reshape(n, length, -1).astype(np.complex64)
    grams, crosses = [], []
    for step in range(1, horizons + 1):
        if future is None:
            ends = np.arange(order - 1, length - step)
            targets = streams[:, ends + step]
        else:
            ends = np.array([length - 1])
            targets = future.reshape(n, future.shape[1], -1)[:, step - 1:step].astype(np.complex64)
        x = _regressors(streams, order, ends).reshape(n if per_window else 1, -1, order)
        y = targets.reshape(n if per_window else 1, -1, 1)
        xh = x.conj().swapaxes(-1, -2)
        grams.append(xh @ x)
        crosses.append(xh @ y)
    gram, cross = np.stack(grams, 1), np.stack(crosses, 1)
    return (gram, cross) if per_window else (gram[0], cross[0])


def fit_ar_coefficients(past: np.ndarray, future: np.ndarray, settings: ArSettings) -> np.ndarray:
    """Global coefficients ``[horizons, order]`` fitted over training windows: estimates ``past``, true ``future``."""
    horizons = settings.future if settings.direct else 1
    gram, cross = _normal_equations(past, future, settings.order, horizons, per_window=False)
    return _ridge_solve(gram, cross, settings.ridge, None)[..., 0]


class ArPredictor:
    """A linear predictor per (antenna, subcarrier) stream; see the module docstring for its modes."""

    name = "ar"

    def __init__(self, settings: ArSettings, coefficients: np.ndarray) -> None:
        horizons = settings.future if settings.direct else 1
        if coefficients.shape != (horizons, settings.order):
            raise ValueError(f"AR coefficients must be {(horizons, settings.order)}, got {coefficients.shape}")
        self.settings = settings
        self.coefficients = coefficients.astype(np.complex64)
        self.past, self.future = settings.past, settings.future

    def _window_coefficients(self, past: np.ndarray) -> np.ndarray:
        if self.settings.mode == "global":
            return np.broadcast_to(self.coefficients, (past.shape[0], *self.coefficients.shape))
        gram, cross = _normal_equations(past, None, self.settings.order, self.coefficients.shape[0], per_window=True)
        return _ridge_solve(gram, cross, self.settings.ridge, self.coefficients[None, ..., None])[..., 0]

    def predict(self, past: np.ndarray) -> np.ndarray:
        n, length, antennas, subcarriers = past.shape
        if length != self.past:
            raise ValueError(f"this AR predictor reads windows of {self.past} past slots, got {length}")
        weights = self._window_coefficients(past)  # [n, horizons, order]
        streams = past.reshape(n, length, -1).astype(np.complex64)
        history = _regressors(streams, self.settings.order, np.array([length - 1]))[:, 0]  # [n, N, order]
        out = np.empty((n, self.future, streams.shape[-1]), np.complex64)
        for step in range(self.future):
            if self.settings.direct:
                out[:, step] = np.einsum("nmp,np->nm", history, weights[:, step])
            else:
                out[:, step] = np.einsum("nmp,np->nm", history, weights[:, 0])
                history = np.concatenate([out[:, step, :, None], history[..., :-1]], axis=-1)
        return out.reshape(n, self.future, antennas, subcarriers)

    def save(self, path: pathlib.Path) -> None:
        metadata = {"kind": "ar", "settings": json.dumps(dataclasses.asdict(self.settings))}
        save_numpy({"real": self.coefficients.real.copy(), "imag": self.coefficients.imag.copy()}, str(path),
                   metadata=metadata)


def _metadata(path: pathlib.Path, kind: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as file:
        metadata = file.metadata() or {}
    if metadata.get("kind") != kind:
        raise ValueError(f"{path} holds a {metadata.get('kind')!r} predictor, not {kind!r}")
    return json.loads(metadata["settings"])


def load_ar(path: pathlib.Path) -> ArPredictor:
    """The AR predictor :meth:`ArPredictor.save` wrote."""
    settings = ArSettings(**_metadata(path, "ar"))
    arrays = load_numpy(str(path))
    return ArPredictor(settings, arrays["real"] + 1j * arrays["imag"])


def fit_ar(train: Windows, val: Windows, orders: tuple[int, ...] = (4, 8, 12, 14),
           ridges: tuple[float, ...] = (1e-3, 1e-2), modes: tuple[str, ...] = AR_MODES,
           snr_db: float = 20.0, seed: int = 0, log: list[dict] | None = None) -> ArPredictor:
    """Fit global coefficients on ``train`` for every candidate (direct or recursive, order, ridge, mode), keep the
    one with the lowest NMSE on ``val``; both are read as estimates at ``snr_db``. ``log``, if given, receives
    every candidate's settings and val NMSE (dB). An adaptive candidate whose order leaves no samples to fit in a
    window is skipped."""
    past, future = train.past.shape[1], train.future.shape[1]
    train_past = estimate(train.past, snr_db, seed)
    val_past = estimate(val.past, snr_db, seed + 1)
    best: tuple[float, ArPredictor] | None = None
    for direct in (True, False):
        horizons = future if direct else 1
        for order in orders:
            gram, cross = _normal_equations(train_past, train.future, order, horizons, per_window=False)
            for ridge in ridges:
                coefficients = _ridge_solve(gram, cross, ridge, None)[..., 0]
                for mode in modes:
                    if mode == "adaptive" and order + horizons > past:
                        continue
                    settings = ArSettings(order=order, direct=direct, mode=mode, ridge=ridge, past=past, future=future)
                    predictor = ArPredictor(settings, coefficients)
                    score = nmse_db(predictor.predict(val_past), val.future)
                    if log is not None:
                        log.append({**dataclasses.asdict(settings), "val_nmse_db": score})
                    if best is None or score < best[0]:
                        best = (score, predictor)
    if best is None:
        raise ValueError("fit_ar found no candidate: give at least one order, ridge and mode that fit the window")
    return best[1]


@dataclass(frozen=True)
class GruSettings:
    """A GRU baseline's size and training recipe."""

    hidden: int = 256
    layers: int = 1
    lr: float = 2e-3
    steps: int = 1200
    batch: int = 64
    seed: int = 0
    snr_db: float = 20.0
    eval_every: int = 200
    residual: bool = True  # predict the change from the newest estimate
    augment: bool = True  # a random common phase and timing offset per training window (the channel's symmetries)
    antennas: int = 16
    subcarriers: int = 32
    past: int = 16
    future: int = 4


class _GruNet(torch.nn.Module):
    def __init__(self, settings: GruSettings) -> None:
        super().__init__()
        features = 2 * settings.antennas * settings.subcarriers
        self.gru = torch.nn.GRU(features, settings.hidden, settings.layers, batch_first=True)
        self.head = torch.nn.Linear(settings.hidden, settings.future * features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(x)
        return self.head(hidden[:, -1])


def _to_real(h: np.ndarray) -> torch.Tensor:
    """``[n, T, A, S]`` complex to ``[n, T, 2 * A * S]`` float32."""
    return torch.from_numpy(np.concatenate([h.real, h.imag], axis=-2).reshape(*h.shape[:2], -1).astype(np.float32))


def _to_complex(x: torch.Tensor, antennas: int, subcarriers: int) -> np.ndarray:
    real = x.detach().numpy().reshape(*x.shape[:2], 2, antennas, subcarriers)
    return (real[:, :, 0] + 1j * real[:, :, 1]).astype(np.complex64)


class GruPredictor:
    """A GRU over the past slots of a window; see the module docstring."""

    name = "gru"

    def __init__(self, settings: GruSettings, net: _GruNet | None = None) -> None:
        self.settings = settings
        self.net = net if net is not None else _GruNet(settings)
        self.past, self.future = settings.past, settings.future

    def _forward(self, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised prediction ``[n, F, 2AS]`` and the per-window scale ``[n, 1, 1]`` from real ``past``."""
        scale = past.pow(2).mean(dim=(1, 2), keepdim=True).mul(2).sqrt().clamp_min(1e-12)  # RMS of the complex CSI
        x = past / scale
        out = self.net(x).view(x.shape[0], self.future, -1)
        if self.settings.residual:
            out = out + x[:, -1:]
        return out, scale

    def predict(self, past: np.ndarray) -> np.ndarray:
        s = self.settings
        if past.shape[1:] != (s.past, s.antennas, s.subcarriers):
            raise ValueError(f"this GRU reads windows [n, {s.past}, {s.antennas}, {s.subcarriers}], got {past.shape}")
        self.net.eval()
        with torch.no_grad():
            out, scale = self._forward(_to_real(past))
        return _to_complex(out * scale, s.antennas, s.subcarriers)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def save(self, path: pathlib.Path) -> None:
        metadata = {"kind": "gru", "settings": json.dumps(dataclasses.asdict(self.settings))}
        weights = {name: t.detach().contiguous().numpy() for name, t in self.net.state_dict().items()}
        save_numpy(weights, str(path), metadata=metadata)


def load_gru(path: pathlib.Path) -> GruPredictor:
    """The GRU predictor :meth:`GruPredictor.save` wrote."""
    settings = GruSettings(**_metadata(path, "gru"))
    predictor = GruPredictor(settings)
    predictor.net.load_state_dict({name: torch.from_numpy(a) for name, a in load_numpy(str(path)).items()})
    predictor.net.eval()
    return predictor


def _augment(past: np.ndarray, future: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same windows seen with another carrier phase and another timing offset (a phase ramp over the
    subcarriers): both leave the channel's statistics as they are, and keep a small network from memorising."""
    n, subcarriers = past.shape[0], past.shape[-1]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1))
    delay = rng.uniform(-0.5, 0.5, size=(n, 1, 1, 1)) / subcarriers  # up to half the window's delay span
    turn = np.exp(1j * (phase + 2 * np.pi * delay * np.arange(subcarriers))).astype(np.complex64)
    return past * turn, future * turn


def train_gru(train: Windows, val: Windows, settings: GruSettings | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[GruPredictor, dict]:
    """Train on ``train`` (fresh estimate noise every batch), keep the state with the lowest val NMSE.

    Returns the predictor and a report: trainable parameters, training seconds, the loss curve, the best val NMSE
    (dB) and the step it was reached at. Threads are the caller's (``torch.set_num_threads``).
    """
    s = settings or GruSettings(antennas=train.past.shape[2], subcarriers=train.past.shape[3],
                                past=train.past.shape[1], future=train.future.shape[1])
    if train.past.shape[1:] != (s.past, s.antennas, s.subcarriers) or train.future.shape[1] != s.future:
        raise ValueError(f"settings expect windows of {s.past} + {s.future} slots of {s.antennas} x {s.subcarriers}, "
                         f"got {train.past.shape} and {train.future.shape}")
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    predictor = GruPredictor(s)
    optimiser = torch.optim.AdamW(predictor.net.parameters(), lr=s.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=s.lr, total_steps=s.steps, pct_start=0.1)
    val_past = estimate(val.past, s.snr_db, s.seed + 1)
    best_score, best_step, best_state = float("inf"), 0, None
    losses: list[float] = []
    started = time.monotonic()
    for step in range(1, s.steps + 1):
        predictor.net.train()
        rows = rng.choice(len(train), size=min(s.batch, len(train)), replace=False)
        past, future = train.past[rows], train.future[rows]
        if s.augment:
            past, future = _augment(past, future, rng)
        out, scale = predictor._forward(_to_real(estimate(past, s.snr_db, int(rng.integers(2**31)))))
        loss = torch.mean((out - _to_real(future) / scale) ** 2)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(predictor.net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % s.eval_every == 0 or step == s.steps:
            score = nmse_db(predictor.predict(val_past), val.future)
            if score < best_score:
                best_score, best_step = score, step
                best_state = {k: v.detach().clone() for k, v in predictor.net.state_dict().items()}
            if progress is not None:
                progress(f"gru step {step}/{s.steps}: loss {np.mean(losses[-s.eval_every:]):.4f}, "
                         f"val {score:.2f} dB ({time.monotonic() - started:.0f} s)")
    if best_state is not None:
        predictor.net.load_state_dict(best_state)
    predictor.net.eval()
    report = {"parameters": predictor.parameters(), "train_s": time.monotonic() - started, "losses": losses,
              "val_nmse_db": best_score, "best_step": best_step, "settings": dataclasses.asdict(s)}
    return predictor, report

