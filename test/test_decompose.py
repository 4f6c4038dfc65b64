"""The pure core: modules cut from a model give the whole model's logits, for several families, with KV caches."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    DynamicCache,
    Gemma3TextConfig,
    GPT2Config,
    Qwen2Config,
)

from edge_lam.chain.shard import BadInput, ShardCore
from edge_lam.descriptors import ModuleSpec, chain_specs
from edge_lam.model.costs import module_cost
from edge_lam.model.decompose import BlockRange, Projector, UnsupportedModelError, build_module, describe
from edge_lam.model.loading import load_model
from edge_lam.model.sampling import Sampling
from edge_lam.model.sessions import SessionLost, SessionStore

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)
RANDOM_FAMILIES = {
    "qwen2": (Qwen2Config(**SMALL, num_hidden_layers=4), [1, 3]),
    # window 4 and every third layer global; the cut leaves a module of sliding-window layers only
    "gemma3": (Gemma3TextConfig(**SMALL, num_hidden_layers=6, head_dim=16, sliding_window=4,
                                sliding_window_pattern=3), [2, 3]),
    "gpt2": (GPT2Config(vocab_size=300, n_embd=64, n_layer=4, n_head=4, n_positions=256), [2]),
}


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


def random_model(family: str) -> tuple[torch.nn.Module, list[int]]:
    config, cuts = RANDOM_FAMILIES[family]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), cuts


def max_diff_split_vs_whole(model, cuts: list[int], prompt_len: int = 12, decode_steps: int = 4) -> float:
    """Prefill then greedy decode with the whole model and with its modules; the largest logit difference."""
    arch = describe(model)
    modules = [build_module(arch, spec) for spec in chain_specs(arch.num_layers, cuts)]
    caches = [m.new_cache() if isinstance(m, BlockRange) else None for m in modules]
    whole_cache = DynamicCache(config=model.config)
    position = 0

    def split(ids):
        nonlocal position
        positions = torch.arange(position, position + ids.shape[1]).unsqueeze(0)
        x = modules[0](ids, positions)
        for module, cache in zip(modules[1:-1], caches[1:-1], strict=True):
            x = module(x, positions, cache)
        position += ids.shape[1]
        return modules[-1](x)

    ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (1, prompt_len),
                        generator=torch.Generator().manual_seed(1))
    diffs = []
    with torch.inference_mode():
        for _ in range(decode_steps + 1):
            whole = model(ids, past_key_values=whole_cache, use_cache=True).logits
            diffs.append(float((whole - split(ids)).abs().max()))
            ids = whole[:, -1:].argmax(-1)
    return max(diffs)


def test_smollm2_split_in_three_gives_the_whole_models_logits(smollm2):
    assert describe(smollm2).num_layers == 30
    assert max_diff_split_vs_whole(smollm2, [10, 20]) <= 1e-4


@pytest.mark.parametrize("family", sorted(RANDOM_FAMILIES))
def test_other_families_split_gives_the_whole_models_logits(family):
    model, cuts = random_model(family)
    assert max_diff_split_vs_whole(model, cuts, prompt_len=9, decode_steps=6) <= 1e-4


def test_structure_is_read_off_the_model():
    gpt2, _ = random_model("gpt2")
    arch = describe(gpt2)
    assert (arch.layers, arch.token_embedding, arch.position_embeddings, arch.final_norm) == ("h", "wte", ("wpe",),
                                                                                             "ln_f")
    with pytest.raises(UnsupportedModelError, match="decoder block list"):
        describe(BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64)))


def test_building_modules_leaves_the_source_model_intact(smollm2):
    arch = describe(smollm2)
    before = [layer.self_attn.layer_idx for layer in smollm2.model.layers]
    build_module(arch, ModuleSpec("blocks", 10, 20))
    assert [layer.self_attn.layer_idx for layer in smollm2.model.layers] == before == list(range(30))


def test_costs_add_up_and_match_the_config():
    model, _ = random_model("qwen2")
    arch = describe(model)
    specs = chain_specs(4, [1, 3])
    costs = {spec.module_id: module_cost(arch, spec) for spec in specs}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    counted_twice = model.get_input_embeddings().weight.numel() if tied else 0
    assert sum(c.params for c in costs.values()) == sum(p.numel() for p in model.parameters()) + counted_twice
    # 2 layers x (K and V) x 2 kv heads x head_dim 16 x 4 bytes
    assert costs["blocks_1_3"].kv_bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert costs["blocks_1_3"].params == 2 * costs["blocks_0_1"].params
    # per layer: q 64x64, k and v 64x32 each, o 64x64, mlp 3 x 64x128 -> 2 FLOPs per weight
    assert costs["blocks_0_1"].flops_per_token == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)
    assert costs["head"].flops_per_token == 2 * 300 * 64 + 2 * 64  # LM head matrix and the norm's weights
    assert costs["embedding"].flops_per_token == 0


def test_module_specs_parse_and_chains_check_their_cuts():
    assert ModuleSpec.parse("blocks:10:20") == ModuleSpec("blocks", 10, 20)
    assert ModuleSpec.parse("blocks:10:20").module_id == "blocks_10_20"
    assert [s.module_id for s in chain_specs(30, [10, 20])] == [
        "embedding", "blocks_0_10", "blocks_10_20", "blocks_20_30", "head"]
    for bad in ("blocks:5:5", "block:0:3", "tail"):
        with pytest.raises(ValueError):
            ModuleSpec.parse(bad)
    with pytest.raises(ValueError, match="increase"):
        chain_specs(30, [20, 10])


def test_projector_maps_sensor_embeddings_into_the_hidden_size():
    projector = Projector(384, 576)
    assert projector(torch.randn(7, 384, dtype=torch.float16)).shape == (1, 7, 576)
    assert module_cost(describe(random_model("qwen2")[0]), ModuleSpec("projector"), 384).params == 385 * 64


def test_session_store_checks_positions_replays_and_expires():
    now = [0.0]
    store = SessionStore(lambda: object(), idle_timeout_s=10, clock=lambda: now[0])
    session = store.checkout("a", 0, reset=False)
    session.length = 5
    assert store.checkout("a", 5, reset=False) is session
    with pytest.raises(SessionLost, match="holds 5 tokens"):
        store.checkout("a", 3, reset=False)
    with pytest.raises(SessionLost, match="not cached"):
        store.checkout("b", 4, reset=False)
    assert store.checkout("a", 0, reset=True) is not session  # a replay starts over
    now[0] = 11.0
    store.checkout("c", 0, reset=False)
    assert store.expire() == ["a"] and "c" in store


def shard_step(core: ShardCore, ids: list[int], session: str, position: int, reset: bool = False):
    done = core.step({"input_ids": torch.tensor([ids])}, session, position, reset, Sampling(), 0)
    outputs, timings = done.tensors, done.timings
    return int(outputs["next_token"]), [m for m, _ in timings]


def test_shard_core_runs_a_whole_chain_and_rebuilds_a_lost_session_by_replay():
    model, _ = random_model("qwen2")
    core = ShardCore(model, [ModuleSpec.parse(m) for m in ["embedding", "blocks:0:2", "blocks:2:4", "head"]])
    token, modules = shard_step(core, [5, 6, 7], "s", 0)
    assert modules == ["embedding", "blocks_0_2", "blocks_2_4", "head"]
    expected, _ = shard_step(core, [token], "s", 3)

    core.sessions[2].drop("s")  # the second block range loses the session
    with pytest.raises(SessionLost):
        shard_step(core, [token], "s", 3)
    assert "s" not in core.sessions[1]  # the failed step dropped it everywhere: nothing half extended is kept
    with pytest.raises(SessionLost):
        shard_step(core, [token], "s", 3)
    replayed, _ = shard_step(core, [5, 6, 7, token], "s", 0, reset=True)
    assert replayed == expected


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"hidden_states": torch.zeros(1, 2, 64)}, "expected a tensor named 'input_ids'"),
        ({"input_ids": torch.zeros(1, 2)}, "input_ids must be int64"),
        ({"input_ids": torch.zeros(2, 2, dtype=torch.int64)}, r"got int64 \[2, 2\]"),
        ({"input_ids": torch.tensor([[1, 300]])}, r"must lie in \[0, 300\)"),
    ],
)
def test_shard_core_refuses_bad_input(tensors, message):
    core = ShardCore(random_model("qwen2")[0], [ModuleSpec("embedding"), ModuleSpec("blocks", 0, 4)])
    with pytest.raises(BadInput, match=message):
        core.step(tensors, "s", 0, False, Sampling(), 0)


def test_shard_core_refuses_a_hidden_state_of_the_wrong_width():
    core = ShardCore(random_model("qwen2")[0], [ModuleSpec("blocks", 2, 4), ModuleSpec("head")])
    with pytest.raises(BadInput, match=r"floating \[1, T>0, 64\]"):
        core.step({"hidden_states": torch.zeros(1, 2, 63)}, "s", 0, False, Sampling(), 0)
    outputs = core.step({"hidden_states": torch.zeros(1, 2, 64, dtype=torch.float16)}, "s", 0, False,
                        Sampling(), 0).tensors
    assert outputs["next_token"].dtype == torch.int64


def test_shard_modules_must_follow_each_other():
    with pytest.raises(ValueError, match="do not follow"):
        ShardCore(random_model("qwen2")[0], [ModuleSpec("blocks", 0, 2), ModuleSpec("blocks", 3, 4)])
