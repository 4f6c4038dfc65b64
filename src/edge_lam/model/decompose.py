"""Cut a transformers causal LM into modules that run apart and together give exactly the whole model's output.

The structure is read off the model, not hard-coded per family: the decoder blocks are the ModuleList of the base
model with ``num_hidden_layers`` entries, the token embedding is ``get_input_embeddings()``, any other embedding
of the base model is a position embedding (GPT-2's ``wpe``), the final norm is the base model's last norm child
and the head is ``get_output_embeddings()``.

A module runs the base model's own ``forward`` on a shell that shares the base model's submodules except the ones
it replaces (its own decoder blocks, an identity for the final norm, no token embedding). Positions, rotary
embeddings, causal and sliding-window masks and the KV cache are thus computed by the library's code for that
family, which is what makes the split model equal to the whole one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from edge_lam.descriptors import ModuleSpec
from edge_lam.model.batched_cache import batchable_config

__all__ = [
    "Architecture",
    "BlockRange",
    "Embedding",
    "Head",
    "Projector",
    "UnsupportedModelError",
    "build_module",
    "describe",
]


class UnsupportedModelError(ValueError):
    """The model's structure could not be read (no single block list, token embedding, final norm or head)."""


@dataclass(frozen=True)
class Architecture:
    """Where the parts of one causal LM are, by attribute name on its base model."""

    model: PreTrainedModel
    config: PretrainedConfig
    base: nn.Module
    layers: str
    token_embedding: str
    position_embeddings: tuple[str, ...]
    final_norm: str

    @property
    def num_layers(self) -> int:
        return len(getattr(self.base, self.layers))

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype


def describe(model: PreTrainedModel) -> Architecture:
    """Read the structure of a causal LM, or raise UnsupportedModelError saying what is missing."""
    config = model.config.get_text_config(decoder=True)
    base = model.base_model
    children = dict(base.named_children())
    token = model.get_input_embeddings()

    layers = [name for name, m in children.items()
              if isinstance(m, nn.ModuleList) and len(m) == config.num_hidden_layers]
    tokens = [name for name, m in children.items() if m is token]
    positions = tuple(name for name, m in children.items() if isinstance(m, nn.Embedding) and m is not token)
    # The final norm is registered after the blocks; norms inside the blocks are not children of the base.
    norms = [name for name, m in children.items() if "norm" in type(m).__name__.lower()]
    found = {"decoder block list": layers, "token embedding": tokens, "final norm": norms[-1:]}
    missing = [what for what, names in found.items() if len(names) != 1]
    if missing or model.get_output_embeddings() is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: cannot find {', '.join(missing) or 'an LM head'} "
            f"among the base model's children {sorted(children)}"
        )
    return Architecture(model, config, base, layers[0], tokens[0], positions, norms[-1])


class _NoPositions(nn.Module):
    """Stands in for a position embedding in modules after the first: positions were added once already."""

    def __init__(self, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*position_ids.shape, self.dim, dtype=self.dtype, device=position_ids.device)


def _shell(arch: Architecture, replace: dict[str, nn.Module | None], config: PretrainedConfig) -> nn.Module:
    """A base model that shares ``arch.base``'s submodules and weights except the ones in ``replace``."""
    shell = object.__new__(type(arch.base))
    shell.__dict__.update(arch.base.__dict__)
    shell._modules = {**arch.base._modules, **replace}
    shell._parameters = dict(arch.base._parameters)
    shell._buffers = dict(arch.base._buffers)
    shell.config = config
    return shell


def _config_for_layers(arch: Architecture, start: int, end: int) -> PretrainedConfig:
    """The text config of a model made of layers [start, end) alone (per-layer settings sliced to match)."""
    config = copy.deepcopy(arch.config)
    for name, value in vars(arch.config).items():
        if isinstance(value, list) and len(value) == arch.num_layers:  # layer_types and other per-layer lists
            setattr(config, name, value[start:end])
    config.num_hidden_layers = end - start
    return config


class Embedding(nn.Module):
    """Token ids (and positions, for models with learned position embeddings) to input hidden states."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        config = _config_for_layers(arch, 0, 0)
        self.base = _shell(arch, {arch.layers: nn.ModuleList(), arch.final_norm: nn.Identity()}, config)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.base(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


class BlockRange(nn.Module):
    """Decoder layers [start, end) with their own KV caches: hidden states in, hidden states out."""

    def __init__(self, arch: Architecture, start: int, end: int, share_weights: bool = False) -> None:
        """``share_weights``: the copied layers keep the source's parameters (inference: no second copy of the
        weights); without, they own copies (training them leaves the source intact)."""
        super().__init__()
        if not 0 <= start < end <= arch.num_layers:
            raise ValueError(f"layers [{start}, {end}) are outside the model's {arch.num_layers}")
        # Copies, so that re-numbering their cache slots leaves the source model intact.
        source = getattr(arch.base, arch.layers)[start:end]
        shared = [*source.parameters(), *source.buffers()] if share_weights else []  # int8 weights are buffers
        layers = copy.deepcopy(source, {id(t): t for t in shared})
        for local, layer in enumerate(layers):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = local
        self.config = _config_for_layers(arch, start, end)
        replace: dict[str, nn.Module | None] = {
            arch.layers: layers, arch.final_norm: nn.Identity(), arch.token_embedding: None,
        }
        replace.update({name: _NoPositions(arch.hidden_size, arch.dtype) for name in arch.position_embeddings})
        self.base = _shell(arch, replace, self.config)
        self.layers = layers
        # What each layer's cache keeps: all tokens, or a sliding window's (Gemma 3's local layers, Mistral)
        self._windows = [getattr(layer, "sliding_window", None) for layer in self.new_cache().layers]

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def held_tokens(self, tokens: int) -> int:
        """Tokens the range's caches hold for a session of ``tokens``, summed over its layers: a sliding-window
        layer keeps only the last ``window - 1`` (transformers' DynamicSlidingWindowLayer)."""
        return sum(min(tokens, window - 1) if window else tokens for window in self._windows)

    @property
    def batchable(self) -> bool:
        """Whether several sessions' caches can step together (``model.batched_cache``)."""
        return batchable_config(self.config)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` [batch, cached + new tokens], False on pads: for sessions batched with left-padded
        caches (the library builds its causal and sliding-window masks from it)."""
        return self.base(
            inputs_embeds=hidden_states, position_ids=position_ids, past_key_values=cache, use_cache=True,
            attention_mask=attention_mask,
        ).last_hidden_state


class Head(nn.Module):
    """Final norm and LM head (with the family's logit soft-capping, if any): hidden states to logits."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.norm = getattr(arch.base, arch.final_norm)
        self.lm_head = arch.model.get_output_embeddings()
        self.softcap = getattr(arch.config, "final_logit_softcapping", None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(hidden_states))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class Projector(nn.Module):
    """Maps SemanticTokens embeddings ([rows, in_dim], e.g. a 384-d text or image embedding) into the model's
    hidden size, so sensor tokens can enter the chain as input hidden states. Untrained until fine-tuned."""

    def __init__(self, in_dim: int, hidden_size: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size, dtype=dtype)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(embeddings.to(self.proj.weight.dtype)).unsqueeze(0)


def build_module(arch: Architecture, spec: ModuleSpec, projector_in_dim: int = 384,
                 share_weights: bool = False) -> nn.Module:
    """The runnable module for ``spec`` (a model module: encoders are nodes of their own). An exit is loaded from
    the exits prepared for the model (AssetMissingError naming the command that trains them when there are none).
    Every module but a block range shares the model's weights; a block range does with ``share_weights``."""
    if spec.kind == "embedding":
        return Embedding(arch)
    if spec.kind == "blocks":
        return BlockRange(arch, spec.layer_start, spec.layer_end, share_weights)
    if spec.kind == "head":
        return Head(arch)
    if spec.kind == "projector":
        return Projector(projector_in_dim, arch.hidden_size, arch.dtype)
    if spec.kind == "exit":
        from edge_lam.model.exits import load_exit  # exits builds on this module's Head: imported when needed

        return load_exit(arch, spec.layer_end)
    raise ValueError(f"{spec} is a node of its own, not a module of the model")
