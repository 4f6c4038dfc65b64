"""The values placement speaks in: units of a model chain with their costs, segments of a plan, and plans.

A model is a chain of units (embedding, each decoder block, head; optionally an encoder or projector in front),
each a ``ModuleSpec`` with its costs; a plan cuts the chain into segments, one per host. ``edge_lam.model.costs``
builds the units of a real model; ``solver`` finds and prices plans; ``policy`` decides when to move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from edge_lam.descriptors import ModuleSpec

__all__ = [
    "TOKEN_ID_BYTES", "PlacedModule", "PlacementError", "Plan", "Segment", "Unit", "merged_units",
    "segment_memory_bytes", "segment_modules",
]

TOKEN_ID_BYTES = 8  # token ids travel as int64 ("input_ids" into the embedding, "next_token" out of the head)


class PlacementError(ValueError):
    """No placement fits the hosts' memory and links, or a placement given to evaluate is malformed."""




@dataclass(frozen=True)
class Unit:
    """The smallest piece the solver moves (one decoder block, the embedding, the head, an encoder): its costs,
    and what it sends to the next unit."""

    module: ModuleSpec
    flops_per_token: float
    weight_bytes: int
    kv_bytes_per_token: int = 0
    out_bytes_per_token: int = 0  # hidden states: hidden size x wire dtype bytes
    out_bytes_per_step: int = 0  # the head's one token id, whatever the number of tokens in flight
    attention_flops_per_context_token: float = 0.0
    flops_per_step: float = 0.0  # the head's logits: for the last token of a step only
    tied_bytes: int = 0  # of weight_bytes, those the embedding holds too (a head tied to it): counted once per host
    read_bytes_per_step: int = 0  # weights a step reads whatever its tokens: every matrix (0: priced by FLOPs alone)
    overhead_flops_per_step: float = 0.0  # a step's dispatch overhead, as the FLOPs that take as long (step_overhead)
    read_efficiency: float = 1.0  # how fast its matrices stream, as a share of the host's advertised bandwidth

    def flops(self, tokens: int, context_tokens: int) -> float:
        per_token = self.flops_per_token + self.attention_flops_per_context_token * context_tokens
        return tokens * per_token + self.flops_per_step

    def bytes_read(self, context_tokens: int) -> int:
        """Bytes a step reads from memory: its weights once, whatever the tokens in flight, and its KV cache of
        ``context_tokens`` tokens (an embedding's lookup reads a row per token: nothing to speak of)."""
        return self.read_bytes_per_step + self.kv_bytes_per_token * context_tokens

    def memory_bytes(self, context_tokens: int) -> int:
        return self.weight_bytes + self.kv_bytes_per_token * context_tokens

    def out_bytes(self, tokens: int) -> int:
        return self.out_bytes_per_token * tokens + self.out_bytes_per_step


class Segment(NamedTuple):
    """Units [start, end) of the chain on one host. A tuple, so plans compare equal to plain tuples in tests."""

    host_id: str
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """A placement and what it is expected to cost per step, with the parts that make up the total.

    ``transfer_s`` has one entry per hop: source -> first segment, between consecutive segments, last -> sink.
    ``problems`` is empty for a feasible plan; ``evaluate`` fills it (and makes the latency infinite) when a
    placement no longer fits the hosts, so that hysteresis sees a broken plan as infinitely slow.
    """

    segments: tuple[Segment, ...]
    expected_latency_s: float
    compute_s: tuple[float, ...]
    transfer_s: tuple[float, ...]
    memory_bytes: tuple[int, ...]
    tokens_in_flight: int
    context_tokens: int
    solver: str = "given"
    problems: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return not self.problems

    def module_specs(self, units: Sequence[Unit]) -> list[list[ModuleSpec]]:
        """Per segment, the modules its host loads, e.g. [[embedding, blocks:0:12], [blocks:12:30, head]]."""
        if self.segments[-1].end != len(units):
            raise PlacementError(f"the plan covers {self.segments[-1].end} units, the chain has {len(units)}")
        return [segment_modules(units, s.start, s.end) for s in self.segments]


@dataclass(frozen=True)
class PlacedModule:
    """One module of a plan, with what a ModuleAssignment carries: its host, memory and compute time per step."""

    module: ModuleSpec
    host_id: str
    memory_bytes: int
    compute_s: float


def merged_units(units: Sequence[Unit], start: int, end: int) -> list[tuple[ModuleSpec, list[Unit]]]:
    """Units [start, end) grouped into modules: consecutive single blocks become one block range."""
    modules: list[tuple[ModuleSpec, list[Unit]]] = []
    for unit in units[start:end]:
        last = modules[-1][0] if modules else None
        if last is not None and last.kind == unit.module.kind == "blocks" and unit.module.follows(last):
            modules[-1] = (ModuleSpec("blocks", last.layer_start, unit.module.layer_end), [*modules[-1][1], unit])
        else:
            modules.append((unit.module, [unit]))
    return modules


def segment_memory_bytes(units: Sequence[Unit], start: int, end: int, context_tokens: int) -> int:
    """Memory units [start, end) take on one host: a head tied to the embedding shares its matrix when both are
    there, so the tied bytes are counted once."""
    members = units[start:end]
    total = sum(u.memory_bytes(context_tokens) for u in members)
    if any(u.module.kind == "embedding" for u in members):
        total -= sum(u.tied_bytes for u in members)
    return total


def segment_modules(units: Sequence[Unit], start: int, end: int) -> list[ModuleSpec]:
    """The modules of units [start, end), consecutive blocks merged into one range."""
    return [module for module, _ in merged_units(units, start, end)]
