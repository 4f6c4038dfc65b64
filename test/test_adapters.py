"""Adapters served where they were trained (no ROS): the collaborative fine-tuning's LoRA, as the edge trainer writes
it, applied by shards to their own layers; the chain with it answers as the training code's own model with it, and
a bad adapter file or an adapter a shard does not hold is a clear error. Real SmolLM2 weights."""

from __future__ import annotations

import pathlib
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from edge_lam.chain.shard import BadInput, ShardCore, Step
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.adapters import AdapterError, load_adapter, parse_adapter_list, save_adapter
from edge_lam.model.loading import load_model
from edge_lam.model.sampling import Sampling
from edge_lam.training.split_parameters import ALL_LINEAR
from model_reference import LORA, MODEL, TrainedAdapter, prompt_ids

GREEDY = Sampling()
PROMPTS = ["What does the robot do when its battery is low?", "How far did the robot drive?"]
NEW_TOKENS = 6


def specs(*texts: str) -> list[ModuleSpec]:
    return [ModuleSpec.parse(t) for t in texts]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedAdapter:
    return TrainedAdapter(tmp_path_factory.mktemp("adapters") / "fleet.safetensors")


@pytest.fixture(scope="module")
def prompts() -> list[torch.Tensor]:
    return [prompt_ids(p) for p in PROMPTS]


def chain_greedy(shards: list[ShardCore], ids: torch.Tensor, adapter: str, session: str) -> list[int]:
    position, tokens = 0, []
    for step in range(NEW_TOKENS):
        x: dict[str, torch.Tensor] = {"input_ids": ids}
        for shard in shards:
            x = shard.step(x, session, position, step == 0, GREEDY, step, adapter=adapter).tensors
        tokens.append(int(x["next_token"][0]))
        position += ids.shape[1]
        ids = x["next_token"].reshape(1, 1)
    return tokens


def test_the_chain_with_the_adapter_answers_as_the_training_model_and_without_as_the_base(trained, prompts):
    layout = [specs("embedding", "blocks:0:10"), specs("blocks:10:20"), specs("blocks:20:30", "head")]
    served = {"fleet": load_adapter(trained.path)}
    shards = [ShardCore(load_model(MODEL, modules), modules, adapters=served) for modules in layout]
    changed = 0
    for index, ids in enumerate(prompts):
        adapted = chain_greedy(shards, ids, "fleet", f"a{index}")
        assert trained.answers_as(ids[0].tolist(), adapted), PROMPTS[index]  # the training code's model
        plain = chain_greedy(shards, ids, "", f"b{index}")
        assert trained.answers_as(ids[0].tolist(), plain, adapted=False), PROMPTS[index]
        changed += adapted != plain
    assert changed >= 1  # the adapter changes the greedy answer


def test_a_shard_applies_the_adapter_of_its_own_layers_only(trained):
    adapter = load_adapter(trained.path)
    assert (adapter.settings, adapter.model, adapter.layers) == (LORA, MODEL, list(range(30)))
    middle = ShardCore(load_model(MODEL, specs("blocks:10:20")), specs("blocks:10:20"), adapters={"fleet": adapter})
    assert middle.adapted_layers == 10 * len(ALL_LINEAR)
    layers = middle.modules[0].layers
    for local, layer in enumerate(layers):
        for path in ("self_attn.q_proj", "mlp.down_proj"):
            a, b = adapter.weights[(10 + local, path)]
            lora = layer.get_submodule(path)
            assert torch.equal(lora.lora_A["fleet"].weight, a) and torch.equal(lora.lora_B["fleet"].weight, b)
    head = ShardCore(load_model(MODEL, specs("head")), specs("head"), adapters={"fleet": adapter})
    assert head.adapted_layers == 0 and head.adapters == ("fleet",)  # holds it, has no layer of it
    hidden = torch.randn(1, 3, 576, generator=torch.Generator().manual_seed(1))
    answers = [head.step({"hidden_states": hidden}, "h", 0, True, GREEDY, 0, adapter=name).tensors["next_token"]
               for name in ("fleet", "")]
    assert torch.equal(*answers)


def test_an_int8_shard_applies_the_lora_over_its_quantized_layers(trained):
    adapter = load_adapter(trained.path)
    core = ShardCore(load_model(MODEL, specs("blocks:10:12"), "int8"), specs("blocks:10:12"),
                     adapters={"fleet": adapter})
    q_proj = core.modules[0].layers[0].self_attn.q_proj
    x = torch.randn(1, 4, 576, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    a, b = adapter.weights[(10, "self_attn.q_proj")]
    core.use_adapter("fleet")
    with torch.inference_mode():
        delta = q_proj(x).float() - q_proj.base_layer(x).float()
        core.use_adapter("")
        assert torch.equal(q_proj(x), q_proj.base_layer(x))
    expected = x.float() @ a.T @ b.T * (LORA.alpha / LORA.rank)
    # the outputs are bf16, rounded at their own magnitude (up to a few units): the LoRA term within that rounding
    assert expected.abs().mean() > 0.05 and (delta - expected).abs().mean() < 0.1 * expected.abs().mean()


def test_steps_of_one_adapter_batch_as_they_run_alone_and_two_adapters_never_share_a_batch(trained):
    core = ShardCore(load_model(MODEL, specs("blocks:10:20")), specs("blocks:10:20"),
                     adapters={"fleet": load_adapter(trained.path)})
    generator = torch.Generator().manual_seed(4)
    prompts = [torch.randn(1, n, 576, generator=generator) for n in (3, 5)]
    for i, x in enumerate(prompts):
        for copy in ("alone", "batch"):
            core.step({"hidden_states": x}, f"{copy}-{i}", 0, True, GREEDY, 0, adapter="fleet")
    steps = [Step({"hidden_states": torch.randn(1, 1, 576, generator=generator)}, f"batch-{i}", x.shape[1],
                  truncate=True, adapter="fleet") for i, x in enumerate(prompts)]
    base = core.step(steps[0].tensors, "base", 0, True, GREEDY, 0).tensors["hidden_states"]  # the last step: none
    result = core.step_batch(steps)
    assert result.batched == 2 and result.error is None
    for i, (step, out) in enumerate(zip(steps, result.outputs, strict=True)):
        alone = core.step(step.tensors, f"alone-{i}", step.position, False, GREEDY, 0, adapter="fleet")
        assert (out.tensors["hidden_states"] - alone.tensors["hidden_states"]).abs().max() <= 1e-3
    assert (base - core.step(steps[0].tensors, "fleet", 0, True, GREEDY, 0, adapter="fleet")
            .tensors["hidden_states"]).abs().max() > 0.01  # with a context of its own, the adapter shows
    unadapted = replace(steps[1], adapter="")
    assert core.batch_key(steps[0]) != core.batch_key(unadapted)
    with pytest.raises(ValueError, match="one batch key"):
        core.step_batch([steps[0], unadapted])


def test_a_step_naming_an_adapter_the_shard_does_not_hold_is_bad_input(trained):
    core = ShardCore(load_model(MODEL, specs("blocks:0:1")), specs("blocks:0:1"),
                     adapters={"fleet": load_adapter(trained.path)})
    hidden = torch.zeros(1, 2, 576)
    with pytest.raises(BadInput, match=r"adapter 'kitchen' is not held here \(held: \['fleet'\]"):
        core.step({"hidden_states": hidden}, "s", 0, True, GREEDY, 0, adapter="kitchen")
    bare = ShardCore(load_model(MODEL, specs("blocks:0:1")), specs("blocks:0:1"))
    with pytest.raises(BadInput, match="held: none"):
        bare.step({"hidden_states": hidden}, "s", 0, True, GREEDY, 0, adapter="fleet")


def _pair(rank: int = 8, fan_in: int = 576, fan_out: int = 576) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(rank, fan_in), torch.zeros(fan_out, rank)


@pytest.mark.parametrize(("weights", "message"), [
    ({"layers.30.self_attn.q_proj": _pair()}, r"layer 30 self_attn\.q_proj: the model has 30 layers"),
    ({"layers.3.self_attn.qq_proj": _pair()}, r"layer 3 self_attn\.qq_proj: the model's layer has no module"),
    ({"layers.3.input_layernorm": _pair()}, r"layer 3 input_layernorm: is a LlamaRMSNorm, not a linear layer"),
    ({"layers.5.mlp.up_proj": _pair(fan_out=576)},
     r"layer 5 mlp\.up_proj: lora_A \[8, 576\] and lora_B \[576, 8\], the model's 576 -> 1536 at rank 8 needs "
     r"\[8, 576\] and \[1536, 8\]"),
    ({"layers.2.self_attn.v_proj": _pair(rank=4)}, r"layer 2 self_attn\.v_proj has rank 4 \(A\) / 4 \(B\), the "
     r"file's settings say 8"),
])
def test_an_adapter_that_does_not_fit_the_model_names_layer_module_and_shape(tmp_path, weights, message):
    path = tmp_path / "bad.safetensors"
    save_adapter(path, {f"{module}.lora_{half}.weight": t for module, pair in weights.items()
                        for half, t in zip("AB", pair, strict=True)}, LORA, MODEL)
    with pytest.raises(AdapterError, match=message):
        ShardCore(load_model(MODEL, specs("blocks:0:1")), specs("blocks:0:1"), adapters={"x": load_adapter(path)})


def test_a_file_that_is_no_adapter_is_named_with_what_is_wrong(tmp_path):
    cases = {"missing.safetensors": "not a readable adapter file"}
    torch.save({"layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 576)}, tmp_path / "pickle.pt")
    cases["pickle.pt"] = "not a readable adapter file"
    save_file({"layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 576)}, tmp_path / "bare.safetensors")
    cases["bare.safetensors"] = "no LoRA settings in its metadata"
    save_adapter(tmp_path / "half.safetensors", {"layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 576)},
                 LORA, MODEL)
    cases["half.safetensors"] = r"layer 0 self_attn\.q_proj has lora_A without its pair"
    save_adapter(tmp_path / "other.safetensors", {"model.embed_tokens.weight": torch.zeros(4, 4)}, LORA, MODEL)
    cases["other.safetensors"] = "'model.embed_tokens.weight' is not a LoRA weight"
    for name, message in cases.items():
        with pytest.raises(AdapterError, match=message):
            load_adapter(tmp_path / name)
    assert parse_adapter_list(["fleet=/a/b.safetensors", "lab=x"]) == {"fleet": pathlib.Path("/a/b.safetensors"),
                                                                       "lab": pathlib.Path("x")}
    for items, message in ((["fleet"], "must be NAME=PATH"), (["=x"], "no adapter name"),
                           (["a.b=x"], "letters, digits"), (["a=x", "a=y"], "named twice")):
        with pytest.raises(ValueError, match=message):
            parse_adapter_list(items)
