"""The LAM channel predictor: a pretrained language model's lower layers as a general sequence model for CSI.

In the spirit of LLM4CP: each past slot's channel estimate ``[antennas, subcarriers]`` becomes one token (a linear
patch embedding of its features, plus a learned position embedding; SmolLM2's own rotary positions run inside its
layers), SmolLM2's decoder layers ``[0, layers)`` read the tokens (frozen, with LoRA on their projections and their
RMSNorms trainable), and a head turns the last token's hidden state into the prediction. Two heads:

- ``"angle_delay"`` (the default): the slots are seen in the angle-delay domain (a 2D DFT over antennas and
  subcarriers, where the channel is a few paths and the estimation noise is white); each token is every bin's log
  power over the window's noise floor and its phase advance since the slot before (its Doppler). The head chooses a
  gain per bin (which bins are paths, which are noise) and, per beam, how much to trust that beam's own AR fit
  (order 2: its few paths, its own Doppler) against the window's pooled AR fit (``ar_order``, over all streams);
  both fits are made on the denoised past. It starts from a fixed soft threshold and an even mix.
- ``"filter"`` (the LAM alone, from the raw slots): a correction of a base prediction, the window's newest
  estimate (``base="last"``) or its own AR fit (``"ar"``), by a linear filter over the past slots whose taps the
  head chooses per window.

The head starts at zero, so the untrained model is its starting point, and training keeps the weights that score
best on val (step 0 included). Each window is divided by the RMS of its past estimates first and scaled back at the
end, so one model serves every path loss.

Only the new weights are trained and saved (LoRA, norms, patch and position embeddings, head): a saved predictor
is one small safetensors file, and SmolLM2's frozen weights are read again from the prepared model when loaded.
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
import torch
from torch import nn

from edge_lam.air.channels import Windows, estimate
from edge_lam.air.predictors import nmse
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.decompose import BlockRange, describe
from edge_lam.training.adapters import LoraSettings, add_lora

__all__ = ["CsiLam", "LamPredictor", "LamSettings", "load_lam", "train_lam", "window_ar"]

MODEL = "smollm2-135m-instruct"
HEADS = ("angle_delay", "filter")
BASES = ("ar", "last")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LamSettings:
    """The predictor's shape and its training recipe; its JSON goes into the saved file."""

    layers: int = 2  # SmolLM2's lower decoder layers [0, layers)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=8, alpha=16.0, target_modules=_PROJECTIONS))
    base: str = "ar"  # what the "filter" head corrects: the window's own AR prediction, or the newest estimate
    ar_order: int = 8  # of the window's own AR fit (pooled over its streams, one per horizon)
    ar_ridge: float = 1e-3  # relative to the mean regressor power
    head: str = "angle_delay"  # angle-delay denoising and per-beam AR mix, or "filter": taps over the raw past
    lr: float = 3e-3
    weight_decay: float = 0.01
    steps: int = 200
    batch: int = 32
    eval_every: int = 50  # steps between checks on val (the best one is kept)
    seed: int = 0
    past: int = 16
    future: int = 4
    snr_db: float = 20.0  # of the training inputs (fresh noise every step) and the val inputs

    def __post_init__(self) -> None:
        if not 1 <= self.layers <= 30:
            raise ValueError(f"layers must be within SmolLM2's 30, got {self.layers}")
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {self.base!r}")
        if not 1 <= self.ar_order < self.past:
            raise ValueError(f"ar_order must be in 1..{self.past - 1}, got {self.ar_order}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.past < 1 or self.future < 1 or self.steps < 1 or self.batch < 1 or self.eval_every < 1:
            raise ValueError(f"past, future, steps, batch and eval_every must be positive: {self}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> LamSettings:
        raw = json.loads(text)
        lora = raw.pop("lora")
        lora["target_modules"] = tuple(lora["target_modules"])
        return LamSettings(lora=LoraSettings(**lora), **raw)


def _frozen_layers(layers: int) -> BlockRange:
    """SmolLM2's layers [0, layers) read from the prepared model alone (the rest stays on the meta device)."""
    from edge_lam.model.loading import load_model

    model = load_model(MODEL, [ModuleSpec("blocks", 0, layers)])
    arch = describe(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return BlockRange(arch, 0, layers)  # owns copies of the layers, frozen as their source


class CsiLam(nn.Module):
    """Normalised past CSI ``[n, past, A, S]`` complex in, normalised future ``[n, future, A, S]`` complex out."""

    def __init__(self, settings: LamSettings, antennas: int, subcarriers: int) -> None:
        super().__init__()
        self.settings, self.antennas, self.subcarriers = settings, antennas, subcarriers
        self.blocks = _frozen_layers(settings.layers)
        add_lora(self.blocks.layers, settings.lora, settings.seed)
        for name, parameter in self.blocks.layers.named_parameters():
            if name.endswith("norm.weight"):
                parameter.requires_grad_(True)
        hidden = self.blocks.config.hidden_size
        features = 2 * antennas * subcarriers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            # "angle_delay" reads three features per bin (log power, phase advance), "filter" the raw slots.
            tokens = 3 * antennas * subcarriers if settings.head == "angle_delay" else features
            self.patch = nn.Linear(tokens, hidden)
            self.position = nn.Parameter(torch.randn(settings.past, hidden) * 0.02)
            self.norm = nn.LayerNorm(hidden)
            self.head = nn.Linear(hidden, self._head_outputs(features))
        self.head_scale = hidden ** -0.5
        if settings.head == "angle_delay":
            # The mask's slope and offset over a bin's log power above the noise floor: at first a fixed soft
            # threshold (half gain at 16 times the noise), which the head then adjusts bin by bin.
            self.mask_shape = nn.Parameter(torch.tensor([2.0, -2.0 * math.log(16.0)]))
        # Zero: the model starts at its base prediction, and training can only improve on it.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _head_outputs(self, features: int) -> int:
        if self.settings.head == "angle_delay":
            return self.antennas * self.subcarriers + self.antennas  # a gain per bin, a mix per beam
        return 2 * self.settings.future * self.settings.past  # complex taps [future, past]

    def forward(self, past: torch.Tensor) -> torch.Tensor:
        n, steps = past.shape[:2]
        if self.settings.head == "angle_delay":
            return self._angle_delay(past)
        tokens = self.patch(torch.view_as_real(past).permute(0, 1, 4, 2, 3).reshape(n, steps, -1)) + self.position
        positions = torch.arange(steps).expand(n, steps)
        hidden = self.blocks(tokens, positions, self.blocks.new_cache())  # a fresh cache: one pass, no decoding
        # Scaled down: Adam moves every weight by about lr at first, so an unscaled head would move each output by
        # lr times its 576 inputs (a tap by ~0.5 at lr 1e-3) on its first step and spoil the base it corrects.
        out = self.head(self.norm(hidden[:, -1])) * self.head_scale
        # A correction that is the window's own linear filter, with taps the layers chose from what they read in
        # the window (its Doppler, its noise).
        taps = torch.view_as_complex(out.view(n, self.settings.future, self.settings.past, 1, 1, 2))
        return self._base(past) + (taps * past[:, None]).sum(dim=2)

    def _angle_delay(self, past: torch.Tensor) -> torch.Tensor:
        """The head "angle_delay" (see the module's docstring): the past denoised by a gain per angle-delay bin,
        then a per-beam mix of each beam's own AR fit and the window's pooled one, both chosen by the layers."""
        n, steps = past.shape[:2]
        bins = torch.fft.fft2(past, dim=(2, 3), norm="ortho")
        power = bins.abs().pow(2)
        floor = power.flatten(1).median(dim=1).values.clamp_min(1e-12)[:, None, None, None]  # mostly noise bins
        level = torch.log(power / floor).clamp(-10.0, 20.0)  # [n, past, A, S]
        # Each bin's phase advance since the slot before (its Doppler; blind to the window's common phase).
        advance = bins[:, 1:] * bins[:, :-1].conj()
        advance = torch.cat([torch.zeros_like(advance[:, :1]), advance / advance.abs().clamp_min(1e-12)], dim=1)
        features = torch.cat([level[..., None], torch.view_as_real(advance)], dim=-1).reshape(n, steps, -1)
        tokens = self.patch(features) + self.position
        positions = torch.arange(steps).expand(n, steps)
        hidden = self.blocks(tokens, positions, self.blocks.new_cache())
        out = self.head(self.norm(hidden[:, -1])) * self.head_scale
        antennas, subcarriers = self.antennas, self.subcarriers
        adjust = out[:, :antennas * subcarriers].view(n, 1, antennas, subcarriers)  # per bin
        mix = out[:, antennas * subcarriers:].view(n, 1, antennas, 1)  # per beam
        mean_level = torch.log(power.mean(dim=1, keepdim=True) / floor).clamp(-10.0, 20.0)
        gain = torch.sigmoid(self.mask_shape[0] * mean_level + self.mask_shape[1] + adjust)
        denoised = torch.fft.ifft2(bins * gain, dim=(2, 3), norm="ortho")
        pooled = torch.fft.fft(window_ar(denoised, self.settings.future, self.settings.ar_order,
                                         self.settings.ar_ridge), dim=2, norm="ortho")
        # Each beam's own AR of order 2 (its few paths, its own Doppler) beside the window's pooled one; the
        # layers weigh the two per beam, starting from their mean.
        beams = torch.fft.fft(denoised, dim=2, norm="ortho")
        per_beam = window_ar(beams.permute(0, 2, 1, 3).reshape(n * antennas, steps, 1, subcarriers),
                             self.settings.future, 2, 1e-2)
        per_beam = per_beam.reshape(n, antennas, self.settings.future, subcarriers).permute(0, 2, 1, 3)
        weight = torch.sigmoid(mix)
        return torch.fft.ifft(weight * per_beam + (1 - weight) * pooled, dim=2, norm="ortho")

    def _base(self, past: torch.Tensor) -> torch.Tensor:
        future = self.settings.future
        if self.settings.base == "last":
            return past[:, -1:].expand(-1, future, -1, -1)
        with torch.no_grad():
            return window_ar(past, future, self.settings.ar_order, self.settings.ar_ridge)

    def trainable(self) -> dict[str, nn.Parameter]:
        """What trains and what is saved: LoRA, the layers' norms, the patch and position embeddings, the head."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}


def window_ar(past: torch.Tensor, future: int, order: int, ridge: float) -> torch.Tensor:
    """Each window's own AR prediction ``[n, future, A, S]``: for each horizon, one set of ``order`` coefficients
    fitted by ridge least squares on the window's past alone, pooled over its ``A * S`` streams (they share one
    Doppler spectrum), applied to its newest ``order`` estimates (direct, not fed its own outputs)."""
    n, steps, antennas, subcarriers = past.shape
    streams = past.permute(0, 2, 3, 1).reshape(n, -1, steps)  # [n, A * S, past]
    runs = streams.unfold(2, order, 1)  # [n, A * S, starts, order]: every run of ``order`` slots, oldest first
    eye = torch.eye(order, dtype=past.dtype)
    predicted = []
    for horizon in range(1, future + 1):
        x = runs[:, :, :steps - order + 1 - horizon].reshape(n, -1, order)
        y = streams[:, :, order - 1 + horizon:].reshape(n, -1, 1)  # the slot ``horizon`` after each run
        gram = x.mH @ x
        load = ridge * gram.diagonal(dim1=1, dim2=2).real.mean(dim=1)
        coefficients = torch.linalg.solve(gram + load[:, None, None] * eye, x.mH @ y)  # [n, order, 1]
        predicted.append((runs[:, :, -1] @ coefficients)[..., 0])
    return torch.stack(predicted, dim=1).reshape(n, future, antennas, subcarriers)


def _normalise(past: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window divided by the RMS of its past estimates, and that RMS ``[n, 1, 1, 1]``."""
    x = torch.from_numpy(np.ascontiguousarray(past, dtype=np.complex64))
    scale = x.abs().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    return x / scale, scale


class LamPredictor:
    """The trained :class:`CsiLam` behind the ``ChannelPredictor`` protocol."""

    name = "lam"

    def __init__(self, model: CsiLam, chunk: int = 256) -> None:
        self.model = model.eval()
        self.past, self.future = model.settings.past, model.settings.future
        self.chunk = chunk  # windows per forward pass: bounds the activations' memory

    def predict(self, past: np.ndarray) -> np.ndarray:
        expected = (self.past, self.model.antennas, self.model.subcarriers)
        if past.ndim != 4 or tuple(past.shape[1:]) != expected:
            raise ValueError(f"the LAM predicts from windows [n, {', '.join(map(str, expected))}] (past, antennas, "
                             f"subcarriers), got {list(past.shape)}")
        out = []
        with torch.no_grad():
            for start in range(0, past.shape[0], self.chunk):
                x, scale = _normalise(past[start:start + self.chunk])
                out.append((self.model(x) * scale).numpy())
        if not out:
            return np.zeros((0, self.future, *expected[1:]), np.complex64)
        return np.concatenate(out).astype(np.complex64)

    def save(self, path: pathlib.Path) -> pathlib.Path:
        """One safetensors file: the trained weights, ``kind`` "lam", the settings and the CSI layout."""
        from safetensors.torch import save_file

        tensors = {name: p.detach().contiguous() for name, p in self.model.trainable().items()}
        metadata = {"kind": "lam", "model": MODEL, "settings": self.model.settings.to_json(),
                    "antennas": str(self.model.antennas), "subcarriers": str(self.model.subcarriers)}
        save_file(tensors, str(path), metadata=metadata)
        return pathlib.Path(path)


def load_lam(path: pathlib.Path) -> LamPredictor:
    """A predictor saved by :meth:`LamPredictor.save`, on SmolLM2's layers read from the prepared model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("kind") != "lam":
            raise ValueError(f"{path} is not a saved LAM predictor (kind {metadata.get('kind')!r})")
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open is no dict)
    model = CsiLam(LamSettings.from_json(metadata["settings"]), int(metadata["antennas"]),
                   int(metadata["subcarriers"]))
    trainable = model.trainable()
    if set(tensors) != set(trainable):
        missing, extra = sorted(set(trainable) - set(tensors)), sorted(set(tensors) - set(trainable))
        raise ValueError(f"{path} does not match the LAM its settings build: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(tensors[name])
    return LamPredictor(model)


def _nmse(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per window, as :func:`edge_lam.air.predictors.nmse` scores it: training minimises what is reported."""
    return (predicted - true).abs().pow(2).sum(dim=(1, 2, 3)) / true.abs().pow(2).sum(dim=(1, 2, 3))


def _val_nmse_db(model: CsiLam, past: torch.Tensor, scale: torch.Tensor, future: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(past[s:s + 256]) for s in range(0, len(past), 256)]) * scale
    model.train()
    return float(10 * np.log10(np.mean(nmse(predicted.numpy(), future))))


def train_lam(train: Windows, val: Windows, settings: LamSettings | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[LamPredictor, dict]:
    """Train on noisy estimates of ``train``'s past (fresh noise and a random common phase every step) against its
    true future, with AdamW on the windows' NMSE; keep the weights that scored best on ``val``.

    The report (a dict, as the baselines'): ``trainable_parameters``, ``total_parameters`` (with SmolLM2's frozen
    layers), ``train_s``, ``val_nmse_db`` and ``best_step`` of the kept weights (0: the untrained base was not
    beaten), ``history`` ``[(step, mean training loss since the last check, val NMSE dB)]`` and ``settings``."""
    settings = settings or LamSettings()
    if train.past.shape[1] != settings.past or train.future.shape[1] != settings.future:
        raise ValueError(f"windows of {train.past.shape[1]} + {train.future.shape[1]} slots, the settings ask for "
                         f"{settings.past} + {settings.future}")
    started = time.monotonic()
    antennas, subcarriers = train.past.shape[2:]
    model = CsiLam(settings, antennas, subcarriers).train()
    trainable = model.trainable()
    optimizer = torch.optim.AdamW(trainable.values(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * (
        0.55 + 0.45 * math.cos(math.pi * min(step, settings.steps) / settings.steps)))
    val_past, val_scale = _normalise(estimate(val.past, settings.snr_db, settings.seed + 1))
    rng = np.random.default_rng(settings.seed)
    # Step 0 is scored too: the untrained model is its base prediction, which training must beat to be kept.
    best = (_val_nmse_db(model, val_past, val_scale, val.future), 0,
            {name: p.detach().clone() for name, p in trainable.items()})
    history: list[tuple[int, float, float]] = [(0, math.nan, best[0])]
    losses: list[float] = []
    for step in range(1, settings.steps + 1):
        rows = rng.choice(len(train), size=min(settings.batch, len(train)), replace=False)
        # A common phase rotation is the same channel seen at another instant of the carrier: free extra windows.
        turn = np.exp(2j * np.pi * rng.random((len(rows), 1, 1, 1))).astype(np.complex64)
        noisy = estimate(train.past[rows] * turn, settings.snr_db, int(rng.integers(2**31)))
        past, scale = _normalise(noisy)
        target = torch.from_numpy(train.future[rows] * turn) / scale
        loss = _nmse(model(past), target).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % settings.eval_every == 0 or step == settings.steps:
            score = _val_nmse_db(model, val_past, val_scale, val.future)
            history.append((step, float(np.mean(losses)), score))
            losses.clear()
            if score < best[0]:
                best = (score, step, {name: p.detach().clone() for name, p in trainable.items()})
            if progress is not None:
                progress(f"lam step {step}/{settings.steps}: train loss {history[-1][1]:.4f}, val NMSE "
                         f"{score:.2f} dB ({time.monotonic() - started:.0f} s)")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(best[2][name])
    report = {
        "trainable_parameters": sum(p.numel() for p in trainable.values()),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "train_s": time.monotonic() - started, "val_nmse_db": best[0], "best_step": best[1], "history": history,
        "settings": dataclasses.asdict(settings),
    }
    return LamPredictor(model), report
