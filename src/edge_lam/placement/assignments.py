"""A placement as the fleet sees it: modules with hosts and topics, and the shards a host agent runs for them.

The coordinator turns a solver ``Plan`` into ``Assignment``s (one per module, in chain order); each host agent
groups the consecutive assignments of its own host into shards (one ShardNode per run of modules). Topics are named
by where the hidden states enter, so they stay the same across plans: ``chain/input`` (token ids into the
embedding), ``chain/hidden_<k>`` (hidden states into block k; k = number of layers for the head), ``chain/output``
(the head's next token, back to the gateway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from edge_lam.descriptors import Host, ModuleSpec
from edge_lam.placement.solver import placed_modules
from edge_lam.placement.types import Plan, Unit

__all__ = ["Assignment", "ShardGroup", "assignments", "chain_topics", "shard_groups"]

CHAIN_INPUT = "chain/input"
CHAIN_OUTPUT = "chain/output"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One module of a plan: what ModuleAssignment carries."""

    module: ModuleSpec
    host_id: str
    input_topic: str
    output_topic: str
    memory_bytes: int
    expected_latency_s: float


@dataclasses.dataclass(frozen=True)
class ShardGroup:
    """Consecutive modules of one host, run as one shard from ``input_topic`` to ``output_topic``."""

    modules: tuple[ModuleSpec, ...]
    input_topic: str
    output_topic: str
    memory_bytes: int

    @property
    def name(self) -> str:
        """A node name for the shard, unique within a plan."""
        return "shard_" + "_".join(m.module_id for m in self.modules)

    @property
    def module_ids(self) -> tuple[str, ...]:
        return tuple(m.module_id for m in self.modules)


def chain_topics(module: ModuleSpec, num_layers: int) -> tuple[str, str]:
    """The input and output topics of a module, named by where the hidden states enter."""
    if module.kind == "embedding":
        return CHAIN_INPUT, "chain/hidden_0"
    if module.kind == "blocks":
        return f"chain/hidden_{module.layer_start}", f"chain/hidden_{module.layer_end}"
    if module.kind == "head":
        return f"chain/hidden_{num_layers}", CHAIN_OUTPUT
    if module.kind == "exit":  # a side branch: reads the hidden states and passes them on unchanged
        return f"chain/hidden_{module.layer_end}", f"chain/hidden_{module.layer_end}"
    raise ValueError(f"a {module.kind} module has no place in the text chain")


def assignments(plan: Plan, units: Sequence[Unit], hosts: Iterable[Host], num_layers: int) -> list[Assignment]:
    """The plan's modules in chain order, with hosts, topics, memory and expected compute time per step."""
    found = []
    for placed in placed_modules(plan, units, hosts):
        input_topic, output_topic = chain_topics(placed.module, num_layers)
        found.append(Assignment(placed.module, placed.host_id, input_topic, output_topic, placed.memory_bytes,
                                placed.compute_s))
    return found


def shard_groups(plan: Sequence[Assignment], host_id: str) -> list[ShardGroup]:
    """The shards ``host_id`` runs for a plan: each run of its consecutive assignments whose topics chain up."""
    groups: list[list[Assignment]] = []
    previous: Assignment | None = None
    for assignment in plan:
        if assignment.host_id == host_id:
            if previous is not None and groups and groups[-1][-1] is previous and \
                    previous.output_topic == assignment.input_topic:
                groups[-1].append(assignment)
            else:
                groups.append([assignment])
        previous = assignment
    return [ShardGroup(tuple(a.module for a in g), g[0].input_topic, g[-1].output_topic,
                       sum(a.memory_bytes for a in g)) for g in groups]
