"""ChainPacket messages to and from the plain values the chain cores work with."""

from __future__ import annotations

import torch
from edge_lam_msgs.msg import ChainPacket, GenerationOptions, StageTiming

from edge_lam.chain.shard import BadInput, Sampling
from edge_lam.tensor_codec import TensorError, to_msg, to_torch

__all__ = ["fail", "packet_bytes", "packet_tensors", "put_tensors", "sampling", "stage_timing"]


def packet_tensors(packet: ChainPacket) -> dict[str, torch.Tensor]:
    """The packet's tensors by name; BadInput when one is malformed or a name repeats."""
    tensors = {}
    for msg in packet.tensors:
        if msg.name in tensors:
            raise BadInput(f"tensor name '{msg.name}' appears twice")
        try:
            tensors[msg.name] = to_torch(msg)
        except TensorError as err:
            raise BadInput(str(err)) from err
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


def stage_timing(stage: str, host_id: str, seconds: float) -> StageTiming:
    return StageTiming(stage=stage, host_id=host_id, seconds=seconds)
