"""What everyone in edge_lam speaks of, as frozen values: a module of a model, a host, a link, and one table each of
module kinds, host roles and wire dtypes.

No torch and no ROS here: the solver, the coordinator, the host agents, the shards, the benches and the tests all
speak in these, and ``edge_lam.wire`` converts them to and from messages in one place.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ADAPTER_NAME",
    "DEFAULT_WIRE_DTYPE",
    "MODULE_KINDS",
    "ROLES",
    "WEIGHT_DTYPES",
    "WIRE_DTYPES",
    "Advert",
    "Host",
    "Link",
    "ModuleSpec",
    "Stage",
    "adapter_name_problem",
    "chain_specs",
    "check_weight_dtype",
    "wire_dtype_bytes",
]

# Kinds of module. ModuleAssignment has a KIND_* constant for each (edge_lam.wire.fleet maps them by name).
MODULE_KINDS = ("embedding", "blocks", "head", "projector", "encoder", "exit")
# What a host is. ComputeAdvert has a ROLE_* constant for each.
ROLES = ("robot", "edge", "cloud")
# Dtypes hidden states may travel in between modules, with their bytes per element: the coordinator prices hops
# with the size, the shards cast with the name, and the plan carries the name so that both agree.
WIRE_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_WIRE_DTYPE = "float16"  # also what a plan that names none means
# Precisions a shard may hold its weights in (edge_lam.model.precision; int8 is weight-only, per channel).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "int8")
MIN_COMPUTE_SHARE = 0.05  # a host at full load is slow, not gone: it keeps this share of its compute
MAX_HOST_ID_CHARS = 64  # host ids name namespaces and topics
MAX_ADVERT_ITEMS = 256  # links or modules one advert may list
# A LoRA adapter's name in requests (GenerationOptions.adapter) and in a shard's `adapters` (peft keys it by name).
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

_TEXT = re.compile(r"blocks:(\d+):(\d+)|encoder:([A-Za-z0-9_]+)|exit:(\d+)|([a-z]+)")


def check_weight_dtype(name: str) -> str:
    """``name`` if it is a weight dtype; ValueError naming the choices for any other."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype '{name}' is not one of {', '.join(WEIGHT_DTYPES)}")
    return name


def adapter_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an adapter, or None (empty names none: the base weights)."""
    if name and not ADAPTER_NAME.fullmatch(name):
        return f"adapter name '{name[:80]}' must be 1 to 64 letters, digits, '_' or '-'"
    return None


def wire_dtype_bytes(name: str) -> int:
    """Bytes per element of a wire dtype; ValueError naming the choices for any other name."""
    if name not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype '{name}' is not one of {sorted(WIRE_DTYPES)}")
    return WIRE_DTYPES[name]


@dataclass(frozen=True)
class ModuleSpec:
    """One module of a cut model: ``embedding``, ``blocks`` [layer_start, layer_end), ``head``, ``projector``, a
    sensor ``encoder`` (with a name), or an early ``exit`` at layer L (``layer_start == layer_end == L``): a trained
    head that reads the hidden states coming out of the blocks that end at L.

    ``str(spec)`` is its text form (``blocks:0:30``, ``encoder:camera``, ``exit:15``), what parameters and plans
    carry; ``module_id`` (``blocks_0_30``, ``exit_15``) names it in node names, timings and adverts.
    """

    kind: str
    layer_start: int = 0
    layer_end: int = 0
    name: str = ""  # an encoder's; empty for every other kind

    def __post_init__(self) -> None:
        if self.kind not in MODULE_KINDS:
            raise ValueError(f"unknown module kind '{self.kind}' (expected one of {MODULE_KINDS})")
        if self.kind == "blocks" and not 0 <= self.layer_start < self.layer_end:
            raise ValueError(f"bad layer range [{self.layer_start}, {self.layer_end})")
        if self.kind == "exit" and not 0 < self.layer_start == self.layer_end:
            raise ValueError(f"an exit sits after a layer L > 0 (layer_start == layer_end == L), got "
                             f"[{self.layer_start}, {self.layer_end})")
        if self.kind not in ("blocks", "exit") and (self.layer_start or self.layer_end):
            raise ValueError(f"a {self.kind} module has no layer range")
        if (self.kind == "encoder") != bool(self.name):
            raise ValueError("an encoder module needs a name, and only an encoder has one")

    def __str__(self) -> str:
        if self.kind == "blocks":
            return f"blocks:{self.layer_start}:{self.layer_end}"
        if self.kind == "exit":
            return f"exit:{self.layer_end}"
        return f"encoder:{self.name}" if self.kind == "encoder" else self.kind

    @property
    def module_id(self) -> str:
        return str(self).replace(":", "_")

    @property
    def in_text_chain(self) -> bool:
        """Whether the module is a link of the token chain (embedding -> blocks -> head)."""
        return self.kind in ("embedding", "blocks", "head")

    @property
    def is_exit(self) -> bool:
        """Whether the module is an early exit: a side branch of the chain that hidden states pass through."""
        return self.kind == "exit"

    @staticmethod
    def exit_at(layer: int) -> ModuleSpec:
        """The exit that reads the hidden states out of layer ``layer - 1``."""
        return ModuleSpec("exit", layer, layer)

    def follows(self, before: ModuleSpec) -> bool:
        """Whether this module takes what ``before`` gives, so both can run as one shard.

        An exit passes its input hidden states on unchanged, so ``blocks:L:M`` (or the head, at the last layer)
        follows ``exit:L`` as it would follow the blocks that end at L.
        """
        if before.kind == "exit" and self.kind in ("blocks", "head"):
            return self.kind == "head" or self.layer_start == before.layer_end
        return (
            (before.kind == "embedding" and self.kind == "blocks" and self.layer_start == 0)
            or (before.kind == "blocks" and self.kind == "blocks" and self.layer_start == before.layer_end)
            or (before.kind == "blocks" and self.kind == "head")
            or (before.kind == "blocks" and self.kind == "exit" and self.layer_end == before.layer_end)
        )

    @staticmethod
    def parse(text: str) -> ModuleSpec:
        """'embedding', 'head', 'projector', 'blocks:START:END' (END exclusive), 'encoder:NAME' or 'exit:LAYER'."""
        match = _TEXT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"'{text}' is not a module (embedding, blocks:START:END, head, projector, encoder:NAME, "
                             "exit:LAYER)")
        if match[1] is not None:
            return ModuleSpec("blocks", int(match[1]), int(match[2]))
        if match[3] is not None:
            return ModuleSpec("encoder", name=match[3])
        if match[4] is not None:
            return ModuleSpec.exit_at(int(match[4]))
        return ModuleSpec(match[5])


def chain_specs(num_layers: int, cuts: list[int]) -> list[ModuleSpec]:
    """Embedding, the block ranges between ``cuts`` (e.g. [10, 20] for 30 layers), head."""
    bounds = [0, *cuts, num_layers]
    if bounds != sorted(set(bounds)):
        raise ValueError(f"cuts {cuts} must increase strictly inside (0, {num_layers})")
    blocks = [ModuleSpec("blocks", a, b) for a, b in itertools.pairwise(bounds)]
    return [ModuleSpec("embedding"), *blocks, ModuleSpec("head")]


@dataclass(frozen=True)
class Host:
    """A host as placement sees it: effective compute and memory bandwidth (already scaled by emulation and load)
    and free memory. ``bandwidth_gbps`` 0 means not measured: its modules are priced by FLOPs alone."""

    host_id: str
    gflops: float
    memory_free_bytes: int
    role: str = "edge"
    bandwidth_gbps: float = 0.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"host '{self.host_id}': role '{self.role}' is not one of {ROLES}")


@dataclass(frozen=True)
class Link:
    """A link from ``src`` to ``dst``: one-way latency, and bandwidth in bits per second (as links are rated and as
    LinkEstimate carries it). One measured direction stands for both unless the other is measured too; ends are ""
    where a link stands alone (an emulated hop of a shard)."""

    src: str
    dst: str
    latency_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0 and self.bandwidth_bps > 0):
            raise ValueError(f"link {self.src or '?'}->{self.dst or '?'} needs a finite latency >= 0 and a "
                             f"bandwidth > 0, got {self.latency_s} s and {self.bandwidth_bps} bit/s")

    def transfer_s(self, nbytes: float) -> float:
        """Time for ``nbytes`` to arrive: the latency plus the bytes over the bandwidth."""
        return self.latency_s + 8 * nbytes / self.bandwidth_bps

    @staticmethod
    def parse(text: str, src: str = "") -> Link:
        """``PEER:LATENCY_S:BANDWIDTH_BPS`` (e.g. ``edge_0:0.02:100e6``) as the link from ``src`` to the peer."""
        parts = text.rsplit(":", 2)
        try:
            peer, latency_s, bandwidth_bps = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"link '{text}' is not PEER:LATENCY_S:BANDWIDTH_BPS") from None
        if not peer or not math.isfinite(bandwidth_bps):
            raise ValueError(f"link '{text}': the peer is empty or the bandwidth is not finite")
        return Link(src, peer, latency_s, bandwidth_bps)


@dataclass(frozen=True)
class Advert:
    """A host as it advertises itself (ComputeAdvert): measured compute, load, memory, links to its peers, battery
    and the modules it runs. Equal adverts mean nothing changed."""

    host_id: str
    role: str
    compute_gflops: float
    load: float
    memory_free_bytes: int
    memory_total_bytes: int
    links: tuple[Link, ...] = ()
    battery_fraction: float | None = None  # None: no battery
    modules_hosted: tuple[str, ...] = ()  # module ids
    memory_bandwidth_gbps: float = 0.0  # measured GB/s of streaming weight reads; 0: not measured (an older agent)

    def __post_init__(self) -> None:
        if not self.host_id or len(self.host_id) > MAX_HOST_ID_CHARS:
            raise ValueError(f"an advert needs a host_id of 1 to {MAX_HOST_ID_CHARS} characters, got "
                             f"{len(self.host_id)}")
        if len(self.links) > MAX_ADVERT_ITEMS or len(self.modules_hosted) > MAX_ADVERT_ITEMS:
            raise ValueError(f"host '{self.host_id}' advertises {len(self.links)} links and "
                             f"{len(self.modules_hosted)} modules (at most {MAX_ADVERT_ITEMS} each)")
        if not (math.isfinite(self.compute_gflops) and self.compute_gflops >= 0):
            raise ValueError(f"host '{self.host_id}' advertises compute {self.compute_gflops} GFLOP/s")
        if not (math.isfinite(self.memory_bandwidth_gbps) and self.memory_bandwidth_gbps >= 0):
            raise ValueError(f"host '{self.host_id}' advertises memory bandwidth {self.memory_bandwidth_gbps} GB/s")
        if not math.isfinite(self.load):
            raise ValueError(f"host '{self.host_id}' advertises load {self.load}")
        if self.role not in ROLES:
            raise ValueError(f"host '{self.host_id}': role '{self.role}' is not one of {ROLES}")

    @property
    def idle_share(self) -> float:
        """The share of the host the load leaves to a new module (never below MIN_COMPUTE_SHARE)."""
        return min(1.0, max(MIN_COMPUTE_SHARE, 1.0 - self.load))

    @property
    def effective_gflops(self) -> float:
        """The compute a new module would get: the measured figure scaled by the share the load leaves."""
        return self.compute_gflops * self.idle_share

    @property
    def effective_bandwidth_gbps(self) -> float:
        """The memory bandwidth a new module would get, scaled by the load as the compute is (others' work on the
        cores streams memory too)."""
        return self.memory_bandwidth_gbps * self.idle_share


class Stage(NamedTuple):
    """Where some of a request's time went: ``module:<id>`` on a host, ``encode``, ``transfer_and_queueing``, ...,
    measured by whoever did the work (StageTiming on the wire)."""

    stage: str
    host_id: str
    seconds: float
