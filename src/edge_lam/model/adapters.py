"""LoRA adapters served by the chain: the collaborative fine-tuning's adapter file, checked against the model, and
applied by each shard to the layers it holds, one adapter (or none) selected per step.

The file (:func:`save_adapter`, written by the edge trainer) is a safetensors file of the trained LoRA weights of
both halves, named as :mod:`edge_lam.training.adapters` names them on the wire
(``layers.<model layer>.<path>.lora_A.weight``), with the LoRA settings in its metadata: alpha (the update is
scaled by alpha / rank) is part of what was trained and is not in the weights. A shard injects the weights with
peft, through the training's own :func:`~edge_lam.training.adapters.lora_config`, into the copies of the layers its
block ranges own, each adapter under its own name: the base weights stay shared and untouched, a step without an
adapter runs them alone, and the served model is the trained one. Only the linear layers the file holds get LoRA,
so a shard applies exactly its share of the file. int8 shards (``Int8Linear``) get the same LoRA layer over their
quantized base.
"""

from __future__ import annotations

import json
import pathlib
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edge_lam.descriptors import adapter_name_problem
from edge_lam.model.decompose import Architecture, BlockRange
from edge_lam.model.precision import Int8Linear
from edge_lam.training.adapters import LoraSettings, lora_config

__all__ = ["Adapter", "AdapterError", "apply_adapters", "load_adapter", "parse_adapter_list", "save_adapter",
           "select_adapter"]

_METADATA_KEY = "edge_lam_lora"
_WEIGHT = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.weight")
# peft's notes on what is done here on purpose: a second adapter in the same layers, a LoRA layer over Int8Linear
_EXPECTED_WARNINGS = ("Already found a `peft_config` attribute", "Unsupported layer type")


class AdapterError(ValueError):
    """An adapter file that cannot be read, or does not fit the model: says what (layer, module, shape, rank)."""


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter: the settings it was trained with, the model it was trained on, and its weights by linear
    layer, ``(model layer, path in the layer) -> (A [rank, in], B [out, rank])``."""

    settings: LoraSettings
    model: str
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    source: str = ""  # where it was read from, for errors

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.weights})

    def check_fits(self, arch: Architecture) -> None:
        """AdapterError naming the first weight that does not fit ``arch``'s model (layer, module, shape)."""
        blocks = getattr(arch.base, arch.layers)
        for (layer, path), (a, b) in sorted(self.weights.items()):
            where = f"{self.source}: layer {layer} {path}"
            if layer >= arch.num_layers:
                raise AdapterError(f"{where}: the model has {arch.num_layers} layers")
            try:
                linear = blocks[layer].get_submodule(path)
            except AttributeError:
                raise AdapterError(f"{where}: the model's layer has no module '{path}'") from None
            if not isinstance(linear, (nn.Linear, Int8Linear)):
                raise AdapterError(f"{where}: is a {type(linear).__name__}, not a linear layer")
            wanted_a, wanted_b = (self.settings.rank, linear.in_features), (linear.out_features, self.settings.rank)
            if tuple(a.shape) != wanted_a or tuple(b.shape) != wanted_b:
                raise AdapterError(f"{where}: lora_A {list(a.shape)} and lora_B {list(b.shape)}, the model's "
                                   f"{linear.in_features} -> {linear.out_features} at rank {self.settings.rank} "
                                   f"needs {list(wanted_a)} and {list(wanted_b)}")

    def within(self, start: int, end: int) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """The weights of layers [start, end)."""
        return {key: pair for key, pair in self.weights.items() if start <= key[0] < end}


def save_adapter(path: str | pathlib.Path, weights: Mapping[str, torch.Tensor], settings: LoraSettings,
                 model: str) -> None:
    """Write LoRA weights named as the training names them (``layers.<layer>.<path>.lora_A.weight``) with the
    settings they were trained with. Written aside and renamed: whoever waits for the file never reads half of it."""
    metadata = {"model": model, "rank": settings.rank, "alpha": settings.alpha,
                "target_modules": list(settings.target_modules)}
    path = pathlib.Path(path)
    partial = path.with_name(f".{path.name}.partial")
    save_file({name: t.detach().contiguous() for name, t in weights.items()}, str(partial),
              metadata={_METADATA_KEY: json.dumps(metadata)})
    partial.replace(path)


def load_adapter(path: str | pathlib.Path) -> Adapter:
    """Read an adapter file; AdapterError saying what is wrong with it (missing, not an adapter, a weight without its
    pair, a rank that is not the file's)."""
    source = str(path)
    try:
        with safe_open(source, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as err:
        raise AdapterError(f"{source}: not a readable adapter file ({err})") from None
    if _METADATA_KEY not in metadata:
        raise AdapterError(f"{source}: no LoRA settings in its metadata (not written by the edge trainer)")
    try:
        info = json.loads(metadata[_METADATA_KEY])
        settings = LoraSettings(int(info["rank"]), float(info["alpha"]), tuple(info["target_modules"]))
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterError(f"{source}: malformed LoRA settings in its metadata ({err})") from None
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _WEIGHT.fullmatch(name)
        if match is None:
            raise AdapterError(f"{source}: '{name}' is not a LoRA weight (layers.<layer>.<module>.lora_A.weight)")
        if tensor.dim() != 2 or not tensor.is_floating_point():
            raise AdapterError(f"{source}: '{name}' must be a floating matrix, got {tensor.dtype} {list(tensor.shape)}")
        halves.setdefault((int(match[1]), match[2]), {})[match[3]] = tensor.float()
    if not halves:
        raise AdapterError(f"{source}: holds no LoRA weights")
    weights = {}
    for (layer, path), pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{source}: layer {layer} {path} has lora_{''.join(pair)} without its pair")
        ranks = (pair["A"].shape[0], pair["B"].shape[1])
        if ranks != (settings.rank, settings.rank):
            raise AdapterError(f"{source}: layer {layer} {path} has rank {ranks[0]} (A) / {ranks[1]} (B), the file's "
                               f"settings say {settings.rank}")
        weights[(layer, path)] = (pair["A"], pair["B"])
    return Adapter(settings, str(info.get("model", "")), weights, source)


def parse_adapter_list(items: Sequence[str]) -> dict[str, pathlib.Path]:
    """``NAME=PATH`` entries (a shard's ``adapters`` parameter) by name; ValueError for a malformed or repeated one."""
    named: dict[str, pathlib.Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        problem = adapter_name_problem(name) if name else "no adapter name"
        if not sep or not path or problem:
            raise ValueError(f"adapter '{item}' must be NAME=PATH: {problem or 'no path'}")
        if name in named:
            raise ValueError(f"adapter '{name}' is named twice")
        named[name] = pathlib.Path(path).expanduser()
    return named


def apply_adapters(blocks: BlockRange, first_layer: int, adapters: Mapping[str, Adapter]) -> int:
    """Inject into ``blocks`` (model layers from ``first_layer`` on) each adapter's weights of those layers, under
    the adapter's name; the linear layers injected, over all adapters. Leaves no adapter selected."""
    injected = 0
    for name, adapter in adapters.items():
        weights = adapter.within(first_layer, first_layer + len(blocks.layers))
        if not weights:
            continue
        local = {(layer - first_layer, path): pair for (layer, path), pair in weights.items()}
        # Exact module paths: only the layers the file holds get LoRA, whatever other adapters target.
        config = lora_config(LoraSettings(adapter.settings.rank, adapter.settings.alpha,
                                          tuple(f"{layer}.{path}" for layer, path in local)))
        config._register_custom_module({Int8Linear: LoraLinear})  # peft's API for a base layer it does not know
        state = {f"{layer}.{path}.lora_{half}.weight": tensor
                 for (layer, path), pair in local.items() for half, tensor in zip("AB", pair, strict=True)}
        with warnings.catch_warnings():
            for text in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")
            inject_adapter_in_model(config, blocks.layers, adapter_name=name)
            loaded = set_peft_model_state_dict(blocks.layers, state, adapter_name=name)
        if loaded.unexpected_keys:  # a name the injection did not make: would silently serve the base there
            raise AdapterError(f"{adapter.source}: peft did not take {loaded.unexpected_keys[:3]}")
        injected += len(local)
    select_adapter([blocks], "")
    return injected


def select_adapter(modules: Iterable[nn.Module], name: str) -> None:
    """Run ``modules``' LoRA layers with adapter ``name``, or with none (the base weights alone) when it is empty.
    A layer that holds no weights of ``name`` runs its base weights."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(bool(name))
                if name:
                    layer.set_adapter(name, inference_mode=True)
