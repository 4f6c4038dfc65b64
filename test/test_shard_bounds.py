"""A shard's bounds without ROS: the context a packet may build, sessions and KV bytes held (least recently used
dropped, and lost when asked again so the gateway replays them), finite hidden states, and bytes given back."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from edge_lam.chain.shard import BadInput, ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.sampling import Sampling
from edge_lam.model.sessions import SessionLost

# 4 layers, 2 KV heads of 8 dims, fp32: 2 * 4 * 2 * 8 * 4 bytes per token
BYTES_PER_TOKEN = 512


def tiny_core(**bounds) -> ShardCore:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    return ShardCore(model, [ModuleSpec.parse(m) for m in ("embedding", "blocks:0:4", "head")], **bounds)


def prefill(core: ShardCore, session: str, tokens: int = 4) -> list[str]:
    return core.step({"input_ids": torch.arange(1, tokens + 1).unsqueeze(0)}, session, 0, True, Sampling(), 0).dropped


def test_a_packet_past_the_context_bound_is_refused_before_any_session_is_made():
    core = tiny_core(max_context_tokens=16)
    with pytest.raises(BadInput, match="exceed the shard's max_context_tokens 16"):
        prefill(core, "long", tokens=17)
    assert core.session_count == 0
    prefill(core, "s", tokens=16)
    with pytest.raises(BadInput, match="max_context_tokens"):  # one more token at the end of a full session
        core.step({"input_ids": torch.tensor([[5]])}, "s", 16, False, Sampling(), 1)


def test_beyond_max_sessions_the_least_recently_used_is_dropped_and_lost_when_asked_again():
    core = tiny_core(max_sessions=2)
    assert prefill(core, "a") == [] and prefill(core, "b") == []
    core.step({"input_ids": torch.tensor([[7]])}, "a", 4, False, Sampling(), 1)  # a is now the most recent
    assert prefill(core, "c") == ["b"]
    assert core.session_count == 2
    with pytest.raises(SessionLost):
        core.step({"input_ids": torch.tensor([[7]])}, "b", 4, False, Sampling(), 1)
    core.max_sessions = 1  # lowered (a live parameter): applies once evicted
    assert core.evict() == ["a"] and core.session_count == 1


def test_kv_bytes_are_bounded_counted_and_given_back_on_release():
    core = tiny_core(max_kv_bytes=10 * BYTES_PER_TOKEN)
    assert core.kv_bytes_for(1) == BYTES_PER_TOKEN
    prefill(core, "a")
    assert core.kv_bytes == 4 * BYTES_PER_TOKEN
    assert prefill(core, "b") == []
    assert prefill(core, "c") == ["a"]  # 12 tokens' worth would exceed 10
    assert core.kv_bytes == 8 * BYTES_PER_TOKEN
    with pytest.raises(BadInput, match="more than max_kv_bytes"):  # alone too big: refused, nothing dropped
        prefill(core, "d", tokens=11)
    core.release("b")
    core.release("c")
    assert core.kv_bytes == 0 and core.session_count == 0


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_hidden_states_that_are_not_finite_are_refused(value):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    core = ShardCore(LlamaForCausalLM(config).eval(), [ModuleSpec.parse("blocks:0:4")])
    hidden = torch.zeros(1, 2, 32)
    hidden[0, 1, 3] = value
    with pytest.raises(BadInput, match="NaN or infinite"):
        core.step({"hidden_states": hidden}, "s", 0, True, Sampling(), 0)


def test_a_sliding_window_cut_back_past_its_window_loses_the_session_for_a_replay():
    """Gemma 3's local layers keep only their window: a verification step that truncates a session past it cannot
    be served from the caches, so the session is lost (the gateway replays it) rather than half cut back."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              max_position_embeddings=128)
    core = ShardCore(AutoModelForCausalLM.from_config(config).eval(),
                     [ModuleSpec.parse(m) for m in ("embedding", "blocks:0:2", "head")])
    prefill(core, "short", tokens=3)  # within the window: cut back as usual
    core.step({"input_ids": torch.tensor([[5]])}, "short", 2, False, Sampling(), 1, truncate=True)
    prefill(core, "long", tokens=8)
    with pytest.raises(SessionLost, match="cannot be cut back to 6 tokens"):
        core.step({"input_ids": torch.tensor([[5]])}, "long", 6, False, Sampling(), 1, truncate=True)
    assert core.session_count == 1  # "long" is gone, "short" is kept
