"""The pure core of a shard running several sessions' steps as one batch: every session gets what it would alone
(SmolLM2, and a sliding-window Gemma 3 whose sessions straddle the window), sessions go on alone afterwards, a bad
packet fails alone, a failed batched forward loses nothing, and packets group without reordering a session's own."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from edge_lam.chain import shard
from edge_lam.chain.requests import Route
from edge_lam.chain.shard import BadInput, ShardCore, Step, batches
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.model.sampling import Sampling
from edge_lam.model.sessions import SessionLost

PROMPTS = ["Hi", "What is a robot?", "Name three colors of the rainbow, please, and say why the sky is blue.",
           "Write one sentence about the sea.", "Count to five."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As a shard computes (num_threads 1); two threads on a busy 2-core machine made tiny matmuls 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def specs(*modules: str) -> list[ModuleSpec]:
    return [ModuleSpec.parse(m) for m in modules]


@pytest.fixture(scope="module")
def smollm2_cores() -> tuple[ShardCore, ShardCore]:
    """SmolLM2 in two shards: token ids -> hidden states, and hidden states -> next token."""
    model = load_model("smollm2-135m-instruct")
    return ShardCore(model, specs("embedding", "blocks:0:15")), ShardCore(model, specs("blocks:15:30", "head"))


def prompt_ids() -> list[torch.Tensor]:
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    return [torch.tensor([tokenizer(p)["input_ids"]]) for p in PROMPTS]


def through(cores: tuple[ShardCore, ShardCore], packet: Step) -> tuple[torch.Tensor, int]:
    """One step of one session alone through both shards: the hidden states between them and the next token."""
    first, second = cores
    hidden = first.step(packet.tensors, packet.session_id, packet.position, packet.reset, packet.sampling,
                        packet.step, packet.truncate).tensors
    out = second.step(hidden, packet.session_id, packet.position, packet.reset, packet.sampling, packet.step,
                      packet.truncate).tensors
    return hidden["hidden_states"], int(out["next_token"])


def decode(session: str, token: int, position: int, step: int) -> Step:
    # truncate, as the gateway sends every data step: a no-op at the session's own length
    return Step({"input_ids": torch.tensor([[token]])}, session, position, step=step, truncate=True)


def test_smollm2_sessions_of_different_lengths_decode_in_batches_as_they_would_alone(smollm2_cores):
    first, second = smollm2_cores
    prompts = prompt_ids()
    assert len({p.shape[1] for p in prompts}) == len(prompts)  # every cache a different length
    alone, batched, positions = {}, {}, {}
    for i, ids in enumerate(prompts):
        positions[i] = ids.shape[1]
        alone[i] = [through(smollm2_cores, Step({"input_ids": ids}, f"alone-{i}", 0, reset=True))[1]]
        batched[i] = [through(smollm2_cores, Step({"input_ids": ids}, f"batch-{i}", 0, reset=True))[1]]
    assert batched == alone
    worst = 0.0
    for step in range(1, 6):
        packets = [decode(f"batch-{i}", batched[i][-1], positions[i] + step - 1, step) for i in batched]
        hidden = first.step_batch(packets)
        assert hidden.batched == len(packets) and hidden.error is None
        heads = second.step_batch([Step(out.tensors, p.session_id, p.position, step=step, truncate=True)
                                   for out, p in zip(hidden.outputs, packets, strict=True)])
        assert heads.batched == len(packets)
        for i, (h, out) in enumerate(zip(hidden.outputs, heads.outputs, strict=True)):
            expected_hidden, expected = through(smollm2_cores, decode(f"alone-{i}", alone[i][-1],
                                                                      positions[i] + step - 1, step))
            alone[i].append(expected)
            batched[i].append(int(out.tensors["next_token"]))
            assert h.tensors["hidden_states"].shape == expected_hidden.shape == (1, 1, 576)
            worst = max(worst, float((h.tensors["hidden_states"] - expected_hidden).abs().max()))
    assert batched == alone
    assert worst <= 1e-3, worst
    # After batched steps each session goes on alone from where it is: positions and caches are right.
    for step in range(6, 8):
        for i in batched:
            position = positions[i] + step - 1
            batched[i].append(through(smollm2_cores, decode(f"batch-{i}", batched[i][-1], position, step))[1])
            alone[i].append(through(smollm2_cores, decode(f"alone-{i}", alone[i][-1], position, step))[1])
    assert batched == alone
    assert all(store.least_recent() for store in first.sessions if store is not None)
    for i in batched:
        first.release(f"batch-{i}"), first.release(f"alone-{i}")
        second.release(f"batch-{i}"), second.release(f"alone-{i}")


def test_a_bad_packet_in_a_batch_fails_alone(smollm2_cores):
    first, second = smollm2_cores
    for name in ("a", "b", "c", "d", "a-alone", "d-alone"):
        through(smollm2_cores, Step({"input_ids": torch.tensor([[1, 2, 3]])}, name, 0, reset=True))
    nan = torch.zeros(1, 1, 576)
    nan[0, 0, 7] = float("nan")
    hidden = torch.randn(1, 1, 576, generator=torch.Generator().manual_seed(0))
    result = second.step_batch([Step({"hidden_states": hidden}, "a", 3, step=1),
                                Step({"hidden_states": nan}, "b", 3, step=1),  # not finite: refused
                                Step({"hidden_states": hidden}, "c", 5, step=1),  # not where its cache ends: lost
                                Step({"hidden_states": -hidden}, "d", 3, step=1)])
    assert result.batched == 2 and result.error is None
    good_a, bad_b, lost_c, good_d = result.outputs
    assert isinstance(bad_b, BadInput) and "NaN" in str(bad_b)
    assert isinstance(lost_c, SessionLost)
    assert "c" not in second.sessions[0]  # as alone: a lost session is dropped, and the gateway replays it
    assert "b" in second.sessions[0]  # a refused packet leaves its session as it was
    for out, x, name in ((good_a, hidden, "a-alone"), (good_d, -hidden, "d-alone")):
        alone = second.step({"hidden_states": x}, name, 3, False, Sampling(), 1).tensors["next_token"]
        assert torch.equal(out.tensors["next_token"], alone)
    # A token id outside the vocabulary fails alone on the first shard too.
    ids = first.step_batch([Step({"input_ids": torch.tensor([[49152]])}, "a", 3, step=1),
                            Step({"input_ids": torch.tensor([[5]])}, "d", 3, step=1),
                            Step({"input_ids": torch.tensor([[6]])}, "b", 3, step=1)])
    assert isinstance(ids.outputs[0], BadInput) and "must lie in" in str(ids.outputs[0])
    assert ids.batched == 2 and all(o.tensors["hidden_states"].shape == (1, 1, 576) for o in ids.outputs[1:])
    for name in ("a", "b", "c", "d", "a-alone", "d-alone"):
        first.release(name)
        second.release(name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sliding_window_sessions_batched_across_the_window_get_what_they_would_alone(attention):
    """Gemma 3 with a window of 4 tokens and every third layer global: sessions shorter and longer than the window
    (one still empty) step together, by one token and by more, and their hidden states are those each gets alone."""
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, num_hidden_layers=6, sliding_window=4,
                              sliding_window_pattern=3, max_position_embeddings=256)
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    core = ShardCore(model, specs("embedding", "blocks:0:6"))
    assert core.batchable
    generator = torch.Generator().manual_seed(1)
    lengths = [0, 2, 3, 5, 9]  # the first a session that starts (at position 0, without a reset) in the batch
    for i, n in enumerate(lengths):
        ids = torch.randint(0, 300, (1, n), generator=generator)
        for session in (f"batch-{i}", f"alone-{i}"):
            if n:
                core.step({"input_ids": ids}, session, 0, True, Sampling(), 0)
    positions = list(lengths)
    worst = 0.0
    for tokens in (1, 1, 2, 1, 1, 3, 1):  # crosses the window for every session
        ids = [torch.randint(0, 300, (1, tokens), generator=generator) for _ in lengths]
        result = core.step_batch([Step({"input_ids": x}, f"batch-{i}", positions[i], truncate=True)
                                  for i, x in enumerate(ids)])
        assert result.batched == len(lengths)
        for i, (x, out) in enumerate(zip(ids, result.outputs, strict=True)):
            alone = core.step({"input_ids": x}, f"alone-{i}", positions[i], False, Sampling(), 0).tensors
            assert out.tensors["hidden_states"].shape == alone["hidden_states"].shape == (1, tokens, 64)
            worst = max(worst, float((out.tensors["hidden_states"] - alone["hidden_states"]).abs().max()))
            positions[i] += tokens
    assert worst <= 1e-5, worst


def tiny_llama(**bounds) -> ShardCore:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return ShardCore(LlamaForCausalLM(config).eval(), specs("embedding", "blocks:0:4", "head"), **bounds)


def prefill(core: ShardCore, session: str, tokens: int) -> int:
    out = core.step({"input_ids": torch.arange(1, tokens + 1).unsqueeze(0)}, session, 0, True, Sampling(), 0)
    return int(out.tensors["next_token"])


def test_a_batched_forward_that_fails_runs_each_step_alone_and_loses_nothing(monkeypatch):
    core = tiny_llama()
    tokens = {name: prefill(core, name, n) for name, n in (("a", 3), ("b", 6), ("a-alone", 3), ("b-alone", 6))}

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(shard, "stack_caches", out_of_memory)  # the batch's own step fails, before any cache moves
    result = core.step_batch([Step({"input_ids": torch.tensor([[tokens["a"]]])}, "a", 3, step=1),
                              Step({"input_ids": torch.tensor([[tokens["b"]]])}, "b", 6, step=1)])
    assert isinstance(result.error, MemoryError) and result.batched == 0
    for out, name, position in zip(result.outputs, ("a", "b"), (3, 6), strict=True):
        alone = core.step({"input_ids": torch.tensor([[tokens[name]]])}, f"{name}-alone", position, False,
                          Sampling(), 1)
        assert torch.equal(out.tensors["next_token"], alone.tensors["next_token"])
        assert core.sessions[1].checkout(name, position + 1, False).length == position + 1


def test_bounds_hold_in_a_batch_and_the_least_recently_used_are_dropped_after_it():
    core = tiny_llama(max_sessions=3, max_context_tokens=6)
    tokens = {name: prefill(core, name, 4) for name in "abc"}
    core.max_sessions = 2  # lowered between steps, as the live parameter does
    result = core.step_batch([Step({"input_ids": torch.tensor([[tokens[n]]])}, n, 4, step=1) for n in "abc"])
    assert result.batched == 3
    assert [out.dropped for out in result.outputs] == [[], [], ["a"]]  # every step answered, then a dropped
    assert core.session_count == 2 and core.kv_bytes == 2 * core.kv_bytes_for(5)
    result = core.step_batch([Step({"input_ids": torch.tensor([[1]])}, n, 5, step=2) for n in "bc"])
    assert result.batched == 2  # both now hold 6 tokens, the context bound
    result = core.step_batch([Step({"input_ids": torch.tensor([[1]])}, n, 6, step=3) for n in "bc"])
    assert result.batched == 0
    assert all(isinstance(out, BadInput) and "max_context_tokens 6" in str(out) for out in result.outputs)


def test_which_steps_batch():
    core = tiny_llama()
    ids = {"input_ids": torch.tensor([[1, 2]])}
    assert core.batch_key(Step(ids, "s", 4)) == core.batch_key(Step(ids, "t", 9, truncate=True)) is not None
    assert core.batch_key(Step({"input_ids": torch.tensor([[1]])}, "s", 4)) != core.batch_key(Step(ids, "s", 4))
    for alone in (Step(ids, "s", 0, reset=True), Step(ids, "s", 4, verify=True),
                  Step(ids, "s", 4, route=Route.CHAIN_AND_EXIT), Step({}, "s", 4)):
        assert core.batch_key(alone) is None
    with pytest.raises(ValueError, match="one per session"):
        core.step_batch([Step(ids, "s", 4), Step(ids, "s", 6)])
    with pytest.raises(ValueError, match="one batch key"):
        core.step_batch([Step(ids, "s", 4), Step({"input_ids": torch.tensor([[1]])}, "t", 4)])


def test_waiting_packets_group_by_key_without_reordering_a_sessions_own():
    # (session, key): None runs alone, as a release or a reset does
    items = [("a", 1), ("b", 1), ("a", 1), ("c", None), ("c", 1), ("d", 2), ("e", 1), ("f", 2), ("b", 1)]
    groups = batches(items, session=lambda i: i[0], key=lambda i: i[1], max_size=8)
    assert groups == [[("a", 1), ("b", 1), ("e", 1)],  # c's 1 waits for c's release; a's and b's second come later
                      [("a", 1), ("b", 1)],
                      [("c", None)],
                      [("c", 1)],
                      [("d", 2), ("f", 2)]]
    assert batches(items[:3], session=lambda i: i[0], key=lambda i: i[1], max_size=1) == [[i] for i in items[:3]]
    assert batches([("a", 1), ("b", 1), ("c", 1)], lambda i: i[0], lambda i: i[1], max_size=2) == [
        [("a", 1), ("b", 1)], [("c", 1)]]
