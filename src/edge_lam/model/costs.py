"""What each module of a cut model costs, for placement: parameters, weight and KV-cache bytes, FLOPs per token,
and the units of a whole chain (from a model, or from a Llama-style model's sizes alone). A unit's weights are also
the bytes a step reads (its matrices, at the weight dtype), but for the embedding, a lookup of one row per token."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from edge_lam.descriptors import DEFAULT_WIRE_DTYPE, ModuleSpec, wire_dtype_bytes
from edge_lam.model.decompose import Architecture, Head, describe
from edge_lam.model.precision import compute_dtype, weight_bytes_per_param
from edge_lam.placement.types import TOKEN_ID_BYTES, Unit

__all__ = ["ModuleCost", "chain_units", "exit_unit", "llama_exit_unit", "llama_units", "module_cost"]

DEFAULT_EXIT_RANK = 64  # what the prepare step trains (model/exits.py)


@dataclass(frozen=True)
class ModuleCost:
    """What a placement needs to know of a module."""

    params: int                     # parameters held
    weight_bytes: int               # memory of those parameters
    kv_bytes_per_token: int         # KV-cache memory per token of context
    flops_per_token: int            # matrix FLOPs per token, context aside
    attention_flops_per_context_token: int  # added per token of context already in the cache


def _own_dtype(arch: Architecture) -> str:
    """The weight dtype name of a model as built (float32, bfloat16, ...)."""
    return str(arch.dtype).removeprefix("torch.")


def module_cost(arch: Architecture, spec: ModuleSpec, projector_in_dim: int = 384,
                exit_rank: int = DEFAULT_EXIT_RANK, shares_head: bool = False,
                weight_dtype: str | None = None) -> ModuleCost:
    """The cost of ``spec`` without building it, its weights in ``weight_dtype`` (``model.precision``; None: the
    model's own dtype). The KV cache is in the dtype activations run in.

    An exit costs its adapter (``exit_rank``) and the final norm and head; ``shares_head``: its host already holds
    the head's matrix (the head, or the embedding when the two are tied), so only the adapter and norm add memory.
    Its FLOPs are the adapter's and the vocabulary projection's, per token it decides.
    """
    weight_dtype = weight_dtype or _own_dtype(arch)
    matrix_bytes, other_bytes = (weight_bytes_per_param(weight_dtype, m) for m in (True, False))
    config, itemsize = arch.config, compute_dtype(weight_dtype).itemsize
    if spec.kind == "exit":
        head = Head(arch)
        adapter = 2 * arch.hidden_size * exit_rank
        matrix = head.lm_head.weight.numel()
        held = adapter + sum(p.numel() for p in head.parameters()) - (matrix if shares_head else 0)
        return ModuleCost(held, int(held * other_bytes), 0, 2 * (adapter + matrix), 0)
    if spec.kind == "embedding":
        parts = [arch.model.get_input_embeddings(), *(getattr(arch.base, n) for n in arch.position_embeddings)]
        params = sum(p.numel() for m in parts for p in m.parameters())
        return ModuleCost(params, int(params * other_bytes), 0, 0, 0)  # a lookup: no matrix products
    if spec.kind == "projector":
        params = (projector_in_dim + 1) * arch.hidden_size
        return ModuleCost(params, int(params * other_bytes), 0, 2 * params, 0)
    if spec.kind == "head":
        head = Head(arch)
        params = sum(p.numel() for p in head.parameters())
        matrix = head.lm_head.weight.numel()
        return ModuleCost(params, int(matrix * matrix_bytes + (params - matrix) * other_bytes), 0, 2 * params, 0)
    layers = getattr(arch.base, arch.layers)[spec.layer_start:spec.layer_end]
    params = sum(p.numel() for p in layers.parameters())
    matrix_params = sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))
    if not matrix_params:  # GPT-2 style Conv1D projections
        matrix_params = sum(p.numel() for p in layers.parameters() if p.dim() == 2)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or arch.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    n = len(layers)
    return ModuleCost(
        params=params,
        weight_bytes=int(matrix_params * matrix_bytes + (params - matrix_params) * other_bytes),
        kv_bytes_per_token=2 * n * kv_heads * head_dim * itemsize,
        flops_per_token=2 * matrix_params,
        attention_flops_per_context_token=4 * n * heads * head_dim,
    )


def llama_units(
    *,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int | None = None,
    dtype_bytes: int = 4,
    wire_dtype: str = DEFAULT_WIRE_DTYPE,
    tied: bool = False,
) -> list[Unit]:
    """Units of a Llama-style decoder (gated MLP, no biases, RMSNorm) from its sizes alone, counted as
    :func:`module_cost` counts them, for tests and benchmarks that should not build a model. ``tied``: the head's
    matrix is the embedding's."""
    head_dim = head_dim or hidden_size // num_heads
    attention = hidden_size * head_dim * (2 * num_heads + 2 * num_kv_heads)  # q, o; k, v
    matrices = attention + 3 * hidden_size * intermediate_size
    hidden = hidden_size * wire_dtype_bytes(wire_dtype)
    block_bytes = (matrices + 2 * hidden_size) * dtype_bytes  # and two norms
    blocks = [
        Unit(ModuleSpec("blocks", i, i + 1), flops_per_token=2 * matrices, weight_bytes=block_bytes,
             kv_bytes_per_token=2 * num_kv_heads * head_dim * dtype_bytes, out_bytes_per_token=hidden,
             attention_flops_per_context_token=4 * num_heads * head_dim, read_bytes_per_step=block_bytes)
        for i in range(num_layers)
    ]
    head_params = vocab_size * hidden_size + hidden_size  # LM head and final norm
    return [
        Unit(ModuleSpec("embedding"), 0, vocab_size * hidden_size * dtype_bytes, out_bytes_per_token=hidden),
        *blocks,
        Unit(ModuleSpec("head"), 0, head_params * dtype_bytes, out_bytes_per_step=TOKEN_ID_BYTES,
             flops_per_step=2 * head_params, tied_bytes=vocab_size * hidden_size * dtype_bytes if tied else 0,
             read_bytes_per_step=head_params * dtype_bytes),
    ]


def llama_exit_unit(layer: int, *, hidden_size: int, vocab_size: int, rank: int = DEFAULT_EXIT_RANK,
                    dtype_bytes: int = 4, shares_head: bool = True) -> Unit:
    """The exit at ``layer`` of a Llama-style model from its sizes alone, counted as :func:`module_cost` counts it.
    It sends nothing down the chain (hidden states pass through it), so its out bytes are zero."""
    adapter, matrix = 2 * hidden_size * rank, vocab_size * hidden_size
    held = adapter + hidden_size + (0 if shares_head else matrix)
    return Unit(ModuleSpec.exit_at(layer), 2 * (adapter + matrix), held * dtype_bytes)


def exit_unit(model: PreTrainedModel, layer: int, rank: int = DEFAULT_EXIT_RANK, shares_head: bool = True) -> Unit:
    """The exit at ``layer`` of any model ``decompose`` can cut, priced by :func:`module_cost`."""
    cost = module_cost(describe(model), ModuleSpec.exit_at(layer), exit_rank=rank, shares_head=shares_head)
    return Unit(ModuleSpec.exit_at(layer), cost.flops_per_token, cost.weight_bytes)


def chain_units(model: PreTrainedModel, wire_dtype: str = DEFAULT_WIRE_DTYPE,
                weight_dtype: str | None = None) -> list[Unit]:
    """Units of any causal LM that ``decompose`` can cut, priced by :func:`module_cost`: embedding, each block, head,
    with weights in ``weight_dtype`` (None: the model's). An int8 head holds a copy of its own of a tied matrix.

    A model built on the meta device (``with torch.device("meta")``) is enough: only parameter counts are read.
    """
    arch = describe(model)
    weight_dtype = weight_dtype or _own_dtype(arch)
    hidden = arch.hidden_size * wire_dtype_bytes(wire_dtype)
    units = []
    specs = [ModuleSpec("embedding"), *(ModuleSpec("blocks", i, i + 1) for i in range(arch.num_layers))]
    for spec in specs:
        cost = module_cost(arch, spec, weight_dtype=weight_dtype)
        read = cost.weight_bytes if spec.kind == "blocks" else 0  # the embedding's lookup reads one row a token
        units.append(Unit(spec, cost.flops_per_token, cost.weight_bytes, cost.kv_bytes_per_token, hidden, 0,
                          cost.attention_flops_per_context_token, read_bytes_per_step=read))
    cost = module_cost(arch, ModuleSpec("head"), weight_dtype=weight_dtype)
    matrix = arch.model.get_output_embeddings().weight
    tied = 0
    if matrix is arch.model.get_input_embeddings().weight and weight_dtype != "int8":
        tied = int(matrix.numel() * weight_bytes_per_param(weight_dtype, True))
    units.append(Unit(ModuleSpec("head"), 0, cost.weight_bytes, out_bytes_per_step=TOKEN_ID_BYTES,
                      flops_per_step=cost.flops_per_token, tied_bytes=tied,  # logits for the last token only
                      read_bytes_per_step=cost.weight_bytes))
    return units
