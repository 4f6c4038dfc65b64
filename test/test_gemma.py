"""Gemma 3 270M, the second real model, through the pure cores: cut into an embedding, three block ranges and a head
it gives the whole model's logits and greedy tokens (sliding-window and global layers, KV caches over decode
steps, a prompt past the 512-token window), a shard reads only its own tensors, its KV bounds count a sliding
layer's window, and no early exit is trained for it. Skipped where setup skipped Gemma (its terms of use)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import GEMMA, REPORTED, requires_gemma
from edge_lam import cli
from edge_lam.assets import AssetMissingError
from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec, chain_specs
from edge_lam.model.costs import chain_units
from edge_lam.model.decompose import BlockRange, build_module, describe
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.model.precision import Int8Linear
from edge_lam.model.sampling import Sampling

pytestmark = requires_gemma

PROMPTS = ["The capital of France is", "A robot arm has three joints:", "def fibonacci(n):"]
CUTS = [4, 11]  # blocks 0-3: sliding-window layers only; 4-10 and 11-17: each with global layers (5, 11, 17)
DECODE_STEPS = 3


@pytest.fixture(scope="module")
def gemma():
    return load_model(GEMMA)


def loaded(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.device.type != "meta"}


def split_and_whole(model, ids: torch.Tensor, steps: int) -> tuple[list[int], list[int], float, list]:
    """Prefill ``ids`` then decode greedily ``steps`` times with the whole model and with its modules (each with its
    own KV cache); the greedy tokens of each, the largest difference of their last logits and the modules' caches."""
    arch = describe(model)
    modules = [build_module(arch, spec, share_weights=True) for spec in chain_specs(arch.num_layers, CUTS)]
    caches = [m.new_cache() if isinstance(m, BlockRange) else None for m in modules]
    whole_cache = DynamicCache(config=model.config)
    whole_ids, split_ids, diff, position = ids, ids, 0.0, 0
    whole_tokens, split_tokens = [], []
    with torch.inference_mode():
        for _ in range(steps + 1):
            whole = model(whole_ids, past_key_values=whole_cache, use_cache=True, logits_to_keep=1).logits[0, -1]
            positions = torch.arange(position, position + split_ids.shape[1]).unsqueeze(0)
            x = modules[0](split_ids, positions)
            for module, cache in zip(modules[1:-1], caches[1:-1], strict=True):
                x = module(x, positions, cache)
            split = modules[-1](x[:, -1:])[0, -1]
            position += split_ids.shape[1]
            diff = max(diff, float((whole - split).abs().max()))
            whole_tokens.append(int(whole.argmax()))
            split_tokens.append(int(split.argmax()))
            whole_ids, split_ids = torch.tensor([[whole_tokens[-1]]]), torch.tensor([[split_tokens[-1]]])
    return whole_tokens, split_tokens, diff, caches


def test_the_structure_is_read_off_gemma(gemma):
    arch = describe(gemma)
    assert (arch.num_layers, arch.hidden_size, arch.position_embeddings) == (18, 640, ())
    assert arch.config.layer_types.count("full_attention") == 3 and arch.config.sliding_window == 512
    assert gemma.get_output_embeddings().weight is gemma.get_input_embeddings().weight  # tied head
    block = build_module(arch, ModuleSpec("blocks", 4, 11))
    assert block.config.layer_types == arch.config.layer_types[4:11]  # sliced per range, so is each cache
    assert [type(layer).__name__ for layer in block.new_cache().layers].count("DynamicLayer") == 1


@pytest.mark.parametrize("prompt", PROMPTS)
def test_gemma_cut_in_five_modules_gives_the_whole_models_logits_and_tokens(gemma, prompt):
    ids = load_tokenizer(GEMMA)(prompt, return_tensors="pt")["input_ids"]
    whole, split, diff, _ = split_and_whole(gemma, ids, DECODE_STEPS)
    assert split == whole
    assert diff <= 1e-4, f"split and whole logits differ by up to {diff}"
    REPORTED.append(f"Gemma 3 270M in five modules vs whole, {prompt!r}: max abs logit difference {diff:.1e} over "
                    f"{DECODE_STEPS + 1} steps")


def test_past_the_sliding_window_the_split_equals_the_whole_model_and_kv_bytes_count_the_window(gemma):
    """A 530-token prompt: the sliding-window caches keep 511 tokens, in each range as in the whole model, and a
    shard's KV bytes count what its caches hold (blocks 0-3 are sliding layers only, 4-10 have one global)."""
    text = " ".join(["The robot drove along the corridor and reported what it saw."] * 48)
    ids = load_tokenizer(GEMMA)(text, return_tensors="pt")["input_ids"][:, :530]
    whole, split, diff, caches = split_and_whole(gemma, ids, 2)
    assert split == whole
    assert diff <= 1e-4, f"split and whole logits differ by up to {diff}"
    REPORTED.append(f"Gemma 3 270M in five modules vs whole, 530-token prompt: max abs logit difference {diff:.1e}")
    slot = 2 * 1 * 256 * 4  # one token of one layer: keys and values, 1 KV head of 256 dims, fp32
    for (start, end), cache in zip([(0, 4), (4, 11)], caches[1:3], strict=True):
        held = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * 4
        core = ShardCore(gemma, [ModuleSpec("blocks", start, end)])
        assert core.kv_bytes_for(532) == held
    assert ShardCore(gemma, [ModuleSpec("blocks", 4, 11)]).kv_bytes_for(2000) == (6 * 511 + 2000) * slot
    assert ShardCore(gemma, [ModuleSpec("blocks", 0, 4)]).kv_bytes_for(100) == 4 * 100 * slot


def test_a_shard_of_a_third_of_the_layers_reads_only_those_tensors(gemma):
    part = load_model(GEMMA, [ModuleSpec("blocks", 6, 12)])
    assert loaded(part) == {name for name in loaded(gemma) if any(f"layers.{i}." in name for i in range(6, 12))}
    core = ShardCore(part, [ModuleSpec("blocks", 6, 12)])
    per_layer = sum(p.numel() for p in gemma.model.layers[0].parameters()) * 4
    assert core.weight_bytes == 6 * per_layer  # fp32; none of the 640 MiB embedding


def test_chain_units_price_gemmas_tied_embedding_once_and_its_blocks(gemma):
    units = chain_units(gemma)
    embedding, blocks, head = units[0], units[1:-1], units[-1]
    assert len(blocks) == 18 and embedding.weight_bytes == 262144 * 640 * 4
    assert head.tied_bytes == embedding.weight_bytes  # a host holding both counts the matrix once
    assert all(u.kv_bytes_per_token == 2 * 256 * 4 for u in blocks)
    assert sum(u.weight_bytes for u in blocks) == sum(p.numel() for p in gemma.model.layers.parameters()) * 4


def test_asking_for_a_gemma_exit_says_none_are_trained(gemma, capsys):
    with pytest.raises(AssetMissingError, match="gemma3-270m has no early exits: they are trained only for "
                       "smollm2-135m-instruct"):
        build_module(describe(gemma), ModuleSpec.exit_at(9))
    assert cli.main(["exits", "--model", GEMMA]) == 1
    assert "`edge-lam prepare` trains exits only for smollm2-135m-instruct" in capsys.readouterr().err


@pytest.mark.parametrize("weight_dtype", ["bfloat16", "int8"])
def test_gemma_at_lower_precision_in_two_partially_loaded_shards(gemma, weight_dtype):
    """Every linear layer of Gemma takes int8 (its input sizes 640, 1024 and 2048 are multiples of 16), and the
    chain's first token for a plain factual prompt is still fp32's."""
    layout = [[ModuleSpec("embedding"), ModuleSpec("blocks", 0, 9)], [ModuleSpec("blocks", 9, 18), ModuleSpec("head")]]
    shards = [ShardCore(load_model(GEMMA, specs, weight_dtype), specs) for specs in layout]
    int8 = [sum(isinstance(m, Int8Linear) for module in shard.modules for m in module.modules()) for shard in shards]
    assert int8 == ([9 * 7, 9 * 7 + 1] if weight_dtype == "int8" else [0, 0])  # 7 per layer, and the head
    ids = load_tokenizer(GEMMA)(PROMPTS[0], return_tensors="pt")["input_ids"]
    fp32 = ShardCore(gemma, [ModuleSpec("embedding"), ModuleSpec("blocks", 0, 18), ModuleSpec("head")])
    first = fp32.step({"input_ids": ids}, "f", 0, True, Sampling(), 0).tensors["next_token"]
    x: dict[str, torch.Tensor] = {"input_ids": ids}
    for shard in shards:
        x = shard.step(x, "s", 0, True, Sampling(), 0).tensors
    assert int(x["next_token"][0]) == int(first[0])
