"""Partial loading: a shard reads only its modules' tensors from the prepared folder, and its answers stay the whole
model's. Real SmolLM2 weights for the figures that matter; a small random Gemma 3 saved to disk for the families
and the error paths."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.loading import load_model
from edge_lam.model.sampling import Sampling

MODEL = "smollm2-135m-instruct"
GREEDY = Sampling()


def loaded(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that hold weights (not on the meta device)."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.device.type != "meta"}


def specs(*texts: str) -> list[ModuleSpec]:
    return [ModuleSpec.parse(t) for t in texts]


@pytest.fixture(scope="module")
def whole():
    return load_model(MODEL)


def test_a_shard_of_middle_blocks_reads_only_those_layers(whole):
    part = load_model(MODEL, specs("blocks:10:20"))
    assert loaded(part) == {name for name in loaded(whole) if any(f"layers.{i}." in name for i in range(10, 20))}
    core = ShardCore(part, specs("blocks:10:20"))
    # a third of the blocks: 10 x 14,160,384 bytes of fp32 weights, none of the 113 MB embedding
    assert core.weight_bytes == 10 * 14_160_384


def test_the_head_tied_to_the_embedding_is_read_once_and_held_once(whole):
    part = load_model(MODEL, specs("head"))
    assert loaded(part) == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    assert part.lm_head.weight.data_ptr() == part.model.embed_tokens.weight.data_ptr()
    both = ShardCore(load_model(MODEL, specs("embedding", "blocks:0:1", "head")),
                     specs("embedding", "blocks:0:1", "head"))
    assert both.weight_bytes == (49152 * 576 + 14_160_384 // 4 + 576) * 4


def test_three_partially_loaded_shards_answer_as_the_whole_model(whole):
    layout = [specs("embedding", "blocks:0:10"), specs("blocks:10:20"), specs("blocks:20:30", "head")]
    shards = [ShardCore(load_model(MODEL, modules), modules) for modules in layout]
    reference = ShardCore(whole, specs("embedding", "blocks:0:30", "head"))
    ids = torch.tensor([[1, 9690, 314, 253, 4375, 30, 2]])
    position, tokens, reference_tokens = 0, [], []
    for step in range(6):
        x: dict[str, torch.Tensor] = {"input_ids": ids}
        for shard in shards:
            x = shard.step(x, "s", position, step == 0, GREEDY, step).tensors
        expected = reference.step({"input_ids": ids}, "r", position, step == 0, GREEDY, step).tensors
        tokens.append(int(x["next_token"][0]))
        reference_tokens.append(int(expected["next_token"][0]))
        position += ids.shape[1]
        ids = x["next_token"].reshape(1, 1)
    assert tokens == reference_tokens


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    """A small random Gemma 3 (tied head, sliding-window layers) saved as a model folder."""
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, num_hidden_layers=6, sliding_window=4,
                              max_position_embeddings=256)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gemma3")
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
    return folder


def test_a_gemma_shard_loaded_in_part_gives_the_whole_models_logits(gemma_folder):
    whole = load_model(str(gemma_folder))
    modules = specs("blocks:2:6", "head")
    part = load_model(str(gemma_folder), modules)
    assert not any("layers.0." in name or "layers.1." in name for name in loaded(part))
    hidden = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(3))
    answers = [ShardCore(m, modules).step({"hidden_states": hidden}, "s", 0, True, GREEDY, 0).tensors["next_token"]
               for m in (whole, part)]
    assert torch.equal(answers[0], answers[1])


def test_a_folder_without_a_tensor_the_shard_needs_is_named_in_the_error(gemma_folder, tmp_path):
    tensors = load_file(gemma_folder / "model.safetensors")
    dropped = next(name for name in tensors if "layers.3.mlp.up_proj" in name)
    del tensors[dropped]
    for file in gemma_folder.iterdir():
        if file.name != "model.safetensors":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    load_model(str(tmp_path), specs("blocks:0:3"))  # layers it does not need may be missing
    with pytest.raises(ValueError, match=r"layers\.3\.mlp\.up_proj"):
        load_model(str(tmp_path), specs("blocks:2:4"))
