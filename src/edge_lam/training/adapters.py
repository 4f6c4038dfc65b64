"""LoRA on a range of decoder layers, its weights as named tensors, and federated averaging of them.

The adapters are injected with ``peft`` into the layers of a :class:`~edge_lam.model.decompose.BlockRange` (which
owns copies of its layers, so each robot's range trains its own adapters on a shared frozen base). What travels is
the *trainable state*: the trainable weights of a range, named ``layers.<model layer>.<path>`` with the model's own
layer numbers, so a robot's bottom range and the edge's top range never share a name and two robots with the same
cut name the same weights the same way. With LoRA that is the adapter weights alone; without (plain split
learning) it is every weight of the range's layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

__all__ = [
    "FederatedAdapters",
    "LoraSettings",
    "add_lora",
    "fedavg",
    "load_trainable_state",
    "lora_config",
    "trainable_state",
]

_ADAPTER = "default"  # peft's adapter name; dropped from the names on the wire


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's rank, scaling numerator (the update is scaled by ``alpha / rank``) and the linear layers it adapts,
    by name inside a decoder layer (``q_proj``, ``v_proj``, ``o_proj``, ``up_proj`` ... for Llama)."""

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")


def lora_config(settings: LoraSettings) -> LoraConfig:
    """peft's config for ``settings``: what training injects, and what a shard serving the adapters injects again."""
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules),
                      lora_dropout=0.0)


def add_lora(layers: nn.ModuleList, settings: LoraSettings, seed: int = 0) -> None:
    """Inject LoRA into ``layers`` in place and leave only the adapters trainable.

    ``seed`` fixes the adapters' initial weights without touching torch's global random state. LoRA's B starts at
    zero, so the model is unchanged until it trains; robots that are to be averaged must start from the same A,
    which is why the edge sends its state to each robot as it joins.
    """
    config = lora_config(settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, layers, adapter_name=_ADAPTER)


def _named_trainable(layers: nn.ModuleList, first_layer: int) -> dict[str, nn.Parameter]:
    named = {}
    for name, parameter in layers.named_parameters():
        if parameter.requires_grad:
            local, _, path = name.partition(".")
            path = path.replace(f".{_ADAPTER}.", ".")
            named[f"layers.{first_layer + int(local)}.{path}"] = parameter
    return named


def trainable_state(layers: nn.ModuleList, first_layer: int) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights of ``layers`` (model layers from ``first_layer`` on), named for the wire."""
    return {name: p.detach().clone() for name, p in _named_trainable(layers, first_layer).items()}


def load_trainable_state(layers: nn.ModuleList, first_layer: int, state: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the trainable weights of ``layers`` with ``state``, which must name exactly those weights."""
    named = _named_trainable(layers, first_layer)
    _check_same_layout(named, state, "the state to load")
    with torch.no_grad():
        for name, parameter in named.items():
            parameter.copy_(state[name])


def _check_same_layout(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], what: str) -> None:
    missing, extra = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
    if missing or extra:
        raise ValueError(f"{what} does not match: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, tensor in reference.items():
        if tuple(other[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{what}: '{name}' has shape {tuple(other[name].shape)}, expected {tuple(tensor.shape)}")


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], sample_counts: Sequence[int]) -> dict[str, torch.Tensor]:
    """The average of ``states`` weighted by each one's number of training samples (FedAvg).

    Sums run in float64 and are rounded once to each tensor's dtype, so the result is the exact weighted mean
    whenever that is representable. Mismatched names or shapes and counts that are not positive raise ValueError.
    """
    if not states:
        raise ValueError("FedAvg needs at least one state")
    if len(states) != len(sample_counts):
        raise ValueError(f"{len(states)} states but {len(sample_counts)} sample counts")
    if any(not count > 0 for count in sample_counts):
        raise ValueError(f"sample counts must be positive, got {list(sample_counts)}")
    for index, state in enumerate(states[1:], start=1):
        _check_same_layout(states[0], state, f"state {index}")
    total = float(sum(sample_counts))
    averaged = {}
    for name, first in states[0].items():
        acc = sum(float(count) * state[name].detach().to(torch.float64) for state, count in zip(states, sample_counts,
                                                                                                  strict=True))
        averaged[name] = (acc / total).to(first.dtype)
    return averaged


class FederatedAdapters:
    """The edge's side of federated averaging: the current global state, the round, this round's contributions.

    A robot that joins late is sent :attr:`state`, the merge of every round so far (or the initial state).
    """

    def __init__(self, initial: Mapping[str, torch.Tensor]) -> None:
        self.state = {name: tensor.detach().clone() for name, tensor in initial.items()}
        self.round = 0
        self._contributions: dict[str, tuple[dict[str, torch.Tensor], int]] = {}

    @property
    def contributors(self) -> tuple[str, ...]:
        """Robots that have contributed to the open round."""
        return tuple(self._contributions)

    def contribute(self, robot: str, state: Mapping[str, torch.Tensor], samples: int) -> None:
        """Take a robot's trained state for the open round (a second one from the same robot replaces its first)."""
        _check_same_layout(self.state, state, f"the state of robot '{robot}'")
        if not samples > 0:
            raise ValueError(f"robot '{robot}' trained on {samples} samples; a contribution needs at least one")
        self._contributions[robot] = ({n: t.detach().clone() for n, t in state.items()}, samples)

    def finish_round(self) -> dict[str, torch.Tensor]:
        """Average this round's contributions into the global state, open the next round, return the new state."""
        if not self._contributions:
            raise ValueError(f"round {self.round} has no contributions to average")
        states, counts = zip(*self._contributions.values(), strict=True)
        self.state = fedavg(states, counts)
        self._contributions.clear()
        self.round += 1
        return self.state
