"""Weight precision per shard: each dtype loads and runs, holds the bytes it should, stays close to fp32, and a chain
of partially loaded int8 shards answers as the int8 whole model does. Real SmolLM2 weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.loading import load_model
from edge_lam.model.precision import WEIGHT_DTYPES, Int8Linear, compute_dtype, quantize_linears
from edge_lam.model.sampling import Sampling

MODEL = "smollm2-135m-instruct"
GREEDY = Sampling()
PROMPT = torch.tensor([[1, 9690, 314, 253, 4375, 30, 2, 6023, 314, 260, 6459, 30, 1975, 314, 260, 2849, 28,
                        582, 2103, 5065, 30, 378, 2330, 5065, 253, 7813, 1267, 30, 2, 1]])


def specs(*texts: str) -> list[ModuleSpec]:
    return [ModuleSpec.parse(t) for t in texts]


def test_int8_linear_is_close_to_the_linear_and_sizes_the_kernel_cannot_take_stay_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(576, 1536), nn.Linear(1536, 40, bias=False), nn.Linear(500, 16)).bfloat16()
    x = torch.randn(3, 5, 576, dtype=torch.bfloat16)
    reference = model[0](x)
    assert quantize_linears(model) == 2  # 500 inputs: the kernel gives garbage (not a multiple of 16)
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear)
    assert model[0].weight.dtype == torch.int8 and model[0](x).shape == (3, 5, 1536)
    error = (model[0](x).float() - reference.float()).abs().max() / reference.float().abs().max()
    assert error < 0.02


def test_an_unknown_weight_dtype_names_the_choices():
    with pytest.raises(ValueError, match="float32, bfloat16, float16, int8"):
        compute_dtype("int4")


@pytest.fixture(scope="module")
def fp32_logits():
    with torch.inference_mode():
        return load_model(MODEL)(PROMPT).logits[0].float()


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_each_weight_dtype_runs_close_to_fp32_in_the_bytes_it_should(weight_dtype, fp32_logits):
    model = load_model(MODEL, weight_dtype=weight_dtype)
    with torch.inference_mode():
        logits = model(PROMPT).logits[0].float()
    agreement = float((logits.argmax(-1) == fp32_logits.argmax(-1)).float().mean())
    kl = float(torch.nn.functional.kl_div(logits.log_softmax(-1), fp32_logits.log_softmax(-1), log_target=True,
                                          reduction="batchmean"))
    print(f"{weight_dtype}: top-1 agreement with fp32 {agreement:.3f}, KL {kl:.4f} nats over {PROMPT.shape[1]} "
          "positions")
    assert agreement >= 0.9 and kl < 0.1
    core = ShardCore(load_model(MODEL, specs("blocks:10:20"), weight_dtype), specs("blocks:10:20"))
    fp32_bytes = 10 * 14_160_384
    expected = {"float32": 1.0, "bfloat16": 0.5, "float16": 0.5, "int8": 0.25}[weight_dtype]
    assert core.weight_bytes == pytest.approx(expected * fp32_bytes, rel=0.01)
    assert core.dtype == compute_dtype(weight_dtype)


def test_int8_shards_loaded_in_part_answer_as_the_int8_whole_model():
    layout = [specs("embedding", "blocks:0:10"), specs("blocks:10:20"), specs("blocks:20:30", "head")]
    shards = [ShardCore(load_model(MODEL, modules, "int8"), modules) for modules in layout]
    whole = ShardCore(load_model(MODEL, weight_dtype="int8"), specs("embedding", "blocks:0:30", "head"))
    ids, position, tokens, reference = PROMPT[:, :8], 0, [], []
    for step in range(5):
        x: dict[str, torch.Tensor] = {"input_ids": ids}
        for shard in shards:
            x = shard.step(x, "s", position, step == 0, GREEDY, step).tensors
        tokens.append(int(x["next_token"][0]))
        reference.append(int(whole.step({"input_ids": ids}, "w", position, step == 0, GREEDY, step)
                             .tensors["next_token"][0]))
        position += ids.shape[1]
        ids = x["next_token"].reshape(1, 1)
    assert tokens == reference
