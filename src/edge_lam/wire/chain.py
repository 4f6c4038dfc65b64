"""ChainPacket and StageTiming messages to and from the plain values the chain cores work with."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from edge_lam_msgs.msg import ChainPacket, GenerationOptions, StageTiming

from edge_lam.descriptors import Stage
from edge_lam.model.sampling import Sampling
from edge_lam.wire.tensors import TensorError, to_msg, to_torch

__all__ = ["fail", "from_stage_msgs", "packet_bytes", "packet_tensors", "put_tensors", "sampling", "to_stage_msgs"]


def packet_tensors(packet: ChainPacket) -> dict[str, torch.Tensor]:
    """The packet's tensors by name; TensorError when one is malformed or a name repeats."""
    tensors = {}
    for msg in packet.tensors:
        if msg.name in tensors:
            raise TensorError(f"tensor name '{msg.name}' appears twice")
        tensors[msg.name] = to_torch(msg)
    return tensors


def put_tensors(packet: ChainPacket, tensors: dict[str, torch.Tensor], wire_dtype: torch.dtype) -> None:
    """Replace the packet's tensors; floating ones travel as ``wire_dtype``."""
    packet.tensors = [to_msg(t.to(wire_dtype) if t.is_floating_point() else t, name) for name, t in tensors.items()]


def packet_bytes(packet: ChainPacket) -> int:
    """The tensor payload a packet carries, in bytes (what an emulated link charges for)."""
    return sum(len(t.data) for t in packet.tensors)


def sampling(options: GenerationOptions) -> Sampling:
    return Sampling(options.do_sample, options.temperature, options.top_p, options.seed)


def fail(packet: ChainPacket, code: int, message: str) -> ChainPacket:
    """Turn the packet into an error packet: no tensors, the code and the reason."""
    packet.tensors = []
    packet.error_code = code
    packet.error_message = message
    return packet


def to_stage_msgs(stages: Iterable[Stage]) -> list[StageTiming]:
    return [StageTiming(stage=s.stage, host_id=s.host_id, seconds=s.seconds) for s in stages]


def from_stage_msgs(msgs: Iterable[StageTiming]) -> list[Stage]:
    return [Stage(m.stage, m.host_id, m.seconds) for m in msgs]
