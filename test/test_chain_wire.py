"""What the gateway takes from the chain's output topic: anything may be published there, so every field is checked
where the packet is converted, and a malformed one becomes a ``problem`` (dropped by the core), never an exception."""

from __future__ import annotations

import numpy as np
import pytest
from edge_lam_msgs.msg import ChainPacket, StageTiming

from edge_lam.wire.chain import from_output_msg, packet_tensors
from edge_lam.wire.tensors import TensorError, to_msg

VOCAB = 49152


def output(*tensors) -> ChainPacket:
    return ChainPacket(request_id="r", session_id="s", step=3, tensors=list(tensors))


def bfloat16_token():
    tensor = to_msg(np.asarray([5], np.int16), "next_token")
    tensor.dtype = "bfloat16"
    return tensor


def three_bytes():
    tensor = to_msg(np.asarray([5], np.int64), "next_token")
    tensor.data = bytes(3)
    return tensor


@pytest.mark.parametrize("tensor", [
    bfloat16_token(),
    to_msg(np.zeros((0,), np.int64), "next_token"),
    to_msg(np.asarray(5, np.int64), "next_token"),  # shape []
    three_bytes(),
    to_msg(np.asarray([np.nan]), "next_token"),
    to_msg(np.asarray([2**62], np.int64), "next_token"),
    to_msg(np.asarray([-5], np.int64), "next_token"),
    to_msg(np.asarray([VOCAB], np.int64), "next_token"),
    to_msg(np.asarray([1.0], np.float32), "next_token"),
    to_msg(np.zeros((1, 1), np.int64), "next_token"),
    to_msg(np.zeros((100,), np.int64), "next_token"),
], ids=["bfloat16", "shape0", "scalar", "3bytes", "nan", "2^62", "-5", "vocab", "float", "2d", "too-many"])
def test_a_next_token_that_is_not_in_vocabulary_int64_ids_is_a_problem_not_an_exception(tensor):
    out = from_output_msg(output(tensor), VOCAB)
    assert out.problem and out.tokens == () and not out.error_code


@pytest.mark.parametrize("confidence", [np.asarray([np.nan], np.float32), np.asarray([1.5], np.float32),
                                        np.asarray([0.5], np.float64), np.asarray([0.5, 0.5], np.float32)])
def test_a_confidence_that_is_not_one_probability_is_a_problem(confidence):
    out = from_output_msg(output(to_msg(np.asarray([5], np.int64), "next_token"), to_msg(confidence, "confidence")),
                          VOCAB)
    assert out.problem and out.tokens == ()


def test_a_proper_answer_and_an_error_packet_convert_and_bad_timings_are_dropped():
    good = output(to_msg(np.asarray([5, 7], np.int64), "next_token"),
                  to_msg(np.asarray([0.25], np.float32), "confidence"))
    good.timings = [StageTiming(stage="module:head", seconds=0.01), StageTiming(stage="x", seconds=float("nan")),
                    StageTiming(stage="y", seconds=-1.0)]
    out = from_output_msg(good, VOCAB)
    assert (out.tokens, out.confidence, out.problem) == ((5, 7), 0.25, "")
    assert [t.stage for t in out.timings] == ["module:head"]
    error = from_output_msg(ChainPacket(request_id="r", error_code=77, error_message="?"), VOCAB)
    assert error.error_code and not error.problem


def test_a_packet_spanning_more_tokens_than_the_bound_is_refused_before_decoding():
    packet = output(to_msg(np.zeros((1, 4096, 8), np.float16), "hidden_states"))
    with pytest.raises(TensorError, match="4096 tokens"):
        packet_tensors(packet, max_tokens=2048)
    assert packet_tensors(packet, max_tokens=4096)["hidden_states"].shape == (1, 4096, 8)
