"""Several sessions' KV caches as one batched cache for the library's own forward, and each row back into its
session's cache afterwards.

Decode steps of different sessions hold caches of different lengths. As transformers' ``generate`` does for a batch
of prompts, the caches are left-padded to the longest, a 2D attention mask hides the pads and each row gets its own
position ids; the model's forward then builds its causal and sliding-window masks itself. Those masks work in padded
coordinates, where a row's tokens are contiguous and end where every other row's end, so the distance between two
tokens of a row (what a sliding window bounds) is the real one. A sliding-window layer keeps only the window's last
tokens: the batched layer holds the longest row's (its length counted as the longest session's), and each row takes
back the last ones it needs.

Only the library's dynamic full-attention and sliding-window cache layers are handled (:func:`batchable_config`);
a model with other layers (chunked, linear or shared-KV attention) steps one session at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

__all__ = ["BATCHABLE_LAYER_TYPES", "batchable_config", "stack_caches", "unstack_caches"]

BATCHABLE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def batchable_config(config: PretrainedConfig) -> bool:
    """Whether every cache layer of a model with this (text) config is one :func:`stack_caches` handles."""
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return set(layer_types) <= BATCHABLE_LAYER_TYPES


def stack_caches(caches: Sequence[DynamicCache], lengths: Sequence[int], new_tokens: int,
                 new_cache: Callable[[], DynamicCache]) -> tuple[DynamicCache, torch.Tensor]:
    """One cache holding ``caches`` (of ``lengths`` tokens each) as rows, left-padded to the longest, and the
    attention mask ``[rows, longest + new_tokens]`` of a step of ``new_tokens`` for every row (False on the pads).
    The sessions' caches are left untouched, so a forward that fails leaves them as they were."""
    longest = max(lengths)
    batched = new_cache()
    if len(batched.layers) != len(caches[0].layers) or any(len(c.layers) != len(batched.layers) for c in caches):
        raise ValueError(f"caches of {[len(c.layers) for c in caches]} layers do not fit a module of "
                         f"{len(batched.layers)}")
    for index, target in enumerate(batched.layers):
        rows = [cache.layers[index] for cache in caches]
        if any(type(layer) not in _LAYERS for layer in [target, *rows]):
            raise TypeError(f"cache layer {index}: {sorted({type(x).__name__ for x in [target, *rows]})} cannot be "
                            "batched (only DynamicLayer and DynamicSlidingWindowLayer)")
        for layer, length in zip(rows, lengths, strict=True):
            seen = layer.cumulative_length if isinstance(layer, DynamicSlidingWindowLayer) else _held(layer)
            if seen != length or _held(layer) > length:
                raise ValueError(f"cache layer {index} holds {seen} tokens of a session of {length}")
        filled = [layer for layer in rows if _held(layer)]
        if not filled:
            continue  # every session is empty: the forward initialises the layer as for a single one
        keys, values = _left_padded(rows, "keys"), _left_padded(rows, "values")
        target.lazy_initialization(keys, values)
        target.keys, target.values = keys, values
        if isinstance(target, DynamicSlidingWindowLayer):
            target.cumulative_length = longest  # the tokens seen by the longest row, as the mask sizes need
    mask = torch.zeros(len(caches), longest + new_tokens, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, longest - length:] = True
    return batched, mask


def unstack_caches(batched: DynamicCache, caches: Sequence[DynamicCache], lengths: Sequence[int]) -> None:
    """Put each row of ``batched`` (after a forward that appended the same number of tokens to every row) back into
    its session's cache: the row's own tokens (``lengths``, the new ones included), its pads dropped. Copies, so a
    session holds no view of the batch's larger tensors."""
    for index, source in enumerate(batched.layers):
        if not source.is_initialized:
            continue
        held = source.keys.shape[-2]
        for row, (cache, length) in enumerate(zip(caches, lengths, strict=True)):
            layer = cache.layers[index]
            keep = min(length, held)  # a sliding-window layer keeps the window's last tokens, a full one all
            keys = source.keys[row:row + 1, :, held - keep:].clone()
            values = source.values[row:row + 1, :, held - keep:].clone()
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = length


def _left_padded(rows: Sequence[DynamicLayer], name: str) -> torch.Tensor:
    """The rows' ``keys`` or ``values`` ([1, heads, n, dim] each) as one [rows, heads, longest n, dim] tensor, each
    row after zeros (masked, but finite: a masked NaN would still poison attention's weighted sum)."""
    like = next(getattr(layer, name) for layer in rows if _held(layer))
    empty = like.new_zeros(0, like.shape[1], like.shape[3])
    # [n, heads, dim] each, padded along n in one call
    sequences = [getattr(layer, name)[0].transpose(0, 1) if _held(layer) else empty for layer in rows]
    return pad_sequence(sequences, batch_first=True, padding_side="left").transpose(1, 2)


def _held(layer: DynamicLayer) -> int:
    """Tokens the layer stores (for a sliding-window layer, at most the window's last)."""
    return layer.keys.shape[-2] if layer.is_initialized and layer.keys is not None and layer.keys.numel() else 0
