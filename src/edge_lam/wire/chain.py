"""ChainPacket, GenerationOptions and StageTiming messages to and from the plain values the chain cores work with."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from builtin_interfaces.msg import Time
from edge_lam_msgs.msg import ChainPacket, GenerationOptions, StageTiming

from edge_lam.chain.flow import MAX_DRAFT_TOKENS
from edge_lam.chain.requests import DRAFTS, ChainError, ChainOutput, ChainStep, Options
from edge_lam.descriptors import Stage
from edge_lam.model.sampling import Sampling
from edge_lam.wire.tensors import TensorError, check, to_msg, to_numpy, to_torch

__all__ = ["fail", "from_options_msg", "from_output_msg", "from_stage_msgs", "packet_bytes", "packet_tensors",
           "put_tensors", "sampling", "to_options_msg", "to_stage_msgs", "to_step_msg"]


def packet_tensors(packet: ChainPacket, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """The packet's tensors by name; TensorError when one is malformed, a name repeats, or (with ``max_tokens``) one
    spans more tokens (its second dimension: [1, T] ids, [1, T, hidden] states) than that, checked before decoding."""
    tensors = {}
    for msg in packet.tensors:
        if msg.name in tensors:
            raise TensorError(f"tensor name '{msg.name}' appears twice")
        shape = check(msg)
        if max_tokens is not None and len(shape) >= 2 and shape[1] > max_tokens:
            raise TensorError(f"tensor '{msg.name}' spans {shape[1]} tokens, more than {max_tokens}")
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


def to_options_msg(options: Options) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                             temperature=options.temperature, top_p=options.top_p, seed=options.seed,
                             stop=list(options.stop), apply_chat_template=options.apply_chat_template,
                             policy=options.policy, allow_degraded=options.allow_degraded,
                             cascade_threshold=options.cascade_threshold, draft_tokens=options.draft_tokens,
                             drafter=options.drafter, adapter=options.adapter)


def from_options_msg(msg: GenerationOptions) -> Options:
    return Options(msg.max_new_tokens, msg.do_sample, msg.temperature, msg.top_p, msg.seed, tuple(msg.stop),
                   msg.apply_chat_template, msg.policy, msg.allow_degraded, msg.cascade_threshold, msg.draft_tokens,
                   msg.drafter, msg.adapter)


def to_step_msg(step: ChainStep, stamp: Time) -> ChainPacket:
    """The packet for the chain's first module: ``input_ids`` int64 [1, T], or no tensor for a release."""
    packet = ChainPacket(request_id=step.request_id, session_id=step.session_id, step=step.step,
                         position=step.position, reset=step.reset, release=step.release, truncate=step.truncate,
                         verify=step.verify, route=int(step.route), options=to_options_msg(step.options))
    packet.header.stamp = stamp
    if step.input_ids:
        packet.tensors = [to_msg(np.asarray([step.input_ids], dtype=np.int64), "input_ids")]
    if step.verify:
        packet.tensors.append(to_msg(np.asarray([step.draft_ids], dtype=np.int64).reshape(1, -1), DRAFTS))
    return packet


def from_output_msg(packet: ChainPacket, vocab_size: int) -> ChainOutput:
    """What the chain's last module (or an early exit) sent: its tokens (and an exit's confidence), or in
    ``problem`` why the packet has none. Anything on the topic may send anything: ``next_token`` must be int64 [n]
    with 1 <= n <= 1 + MAX_DRAFT_TOKENS ids in [0, ``vocab_size``), ``confidence`` float32 [1] in [0, 1]."""
    tokens, confidence, problem = (), 1.0, ""
    try:
        error = ChainError(packet.error_code)
    except ValueError:  # a code this gateway does not know is still an error
        error = ChainError.INTERNAL
    if not packet.release and error == ChainError.NONE:
        try:
            tokens, confidence = _next_tokens(packet, vocab_size)
        except TensorError as err:
            problem = f"the chain's last module sent a malformed next_token or confidence: {err}"
    return ChainOutput(packet.request_id, packet.session_id, packet.step, packet.release,
                       error, packet.error_message, tokens, problem,
                       tuple(from_stage_msgs(packet.timings)), confidence)


def _next_tokens(packet: ChainPacket, vocab_size: int) -> tuple[tuple[int, ...], float]:
    """The packet's token ids and confidence, checked (shapes before any decoding); TensorError says what is wrong."""
    named = {t.name: t for t in packet.tensors}
    if "next_token" not in named:
        raise TensorError(f"got tensors {sorted(named)}, not next_token")
    msg = named["next_token"]
    shape = check(msg)
    if msg.dtype != "int64" or len(shape) != 1 or not 1 <= shape[0] <= 1 + MAX_DRAFT_TOKENS:
        raise TensorError(f"next_token must be int64 [n], 1 <= n <= {1 + MAX_DRAFT_TOKENS}, got {msg.dtype} "
                          f"{list(shape)}")
    ids = to_numpy(msg)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise TensorError(f"next_token must lie in [0, {vocab_size}), got {ids.tolist()}")
    confidence = 1.0
    if "confidence" in named:
        msg = named["confidence"]
        if msg.dtype != "float32" or check(msg) != (1,):
            raise TensorError(f"confidence must be float32 [1], got {msg.dtype} {list(msg.shape)}")
        confidence = float(to_numpy(msg)[0])
        if not 0.0 <= confidence <= 1.0:  # NaN too
            raise TensorError(f"confidence must be a probability, got {confidence}")
    return tuple(int(t) for t in ids), confidence


def fail(packet: ChainPacket, code: int, message: str) -> ChainPacket:
    """Turn the packet into an error packet: no tensors, the code and the reason."""
    packet.tensors = []
    packet.error_code = code
    packet.error_message = message
    return packet


def to_stage_msgs(stages: Iterable[Stage]) -> list[StageTiming]:
    return [StageTiming(stage=s.stage, host_id=s.host_id, seconds=s.seconds) for s in stages]


def from_stage_msgs(msgs: Iterable[StageTiming]) -> list[Stage]:
    """The timings a packet carries; one that is not a finite duration >= 0 is dropped (it would poison the sums)."""
    return [Stage(m.stage, m.host_id, m.seconds) for m in msgs if math.isfinite(m.seconds) and m.seconds >= 0]
