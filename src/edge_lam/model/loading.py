"""Loading the model a chain runs, from the cache folder that setup prepared (never from a hub).

A shard needs a few of the model's tensors, so :func:`load_model` given the shard's modules builds the model with
its parameters on the meta device (no memory; buffers such as rotary frequencies are computed as usual) and reads
from the safetensors files only the tensors those modules use: a shard's resident memory follows its share of the
weights, not the model's size.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from edge_lam.assets import gemma3_dir, smollm2_dir
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.precision import compute_dtype, quantize_linears
from edge_lam.model.sessions import give_back_memory

__all__ = ["MODELS", "load_model", "load_tokenizer", "model_path", "used_parameters"]

# Model ids a chain can name instead of a folder.
MODELS = {"smollm2-135m-instruct": smollm2_dir, "gemma3-270m": gemma3_dir}


def model_path(model: str) -> pathlib.Path:
    """A known model id, or a folder holding a transformers model."""
    if model in MODELS:
        return MODELS[model]()
    path = pathlib.Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{model}' is neither a known model id {sorted(MODELS)} nor a model folder")
    return path


def load_model(model: str, modules: Sequence[ModuleSpec] | None = None,
               weight_dtype: str = "float32") -> PreTrainedModel:
    """The model in eval mode with weights in ``weight_dtype`` (``model.precision``). With ``modules``, only the
    parameters they use hold weights; the others stay on the meta device. Not cached: a shard keeps only the parts
    it built, the rest is freed."""
    transformers_logging.disable_progress_bar()  # a progress bar per load would flood the node's log
    folder = model_path(model)
    dtype = compute_dtype(weight_dtype)
    if modules is None:
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    else:
        with init_empty_weights(include_buffers=False):
            loaded = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype).eval()
        loaded.tie_weights()  # empty weights are made one by one: a tied head gets its own until tied again
        names = used_parameters(loaded, modules)
        loaded.load_state_dict(_read_tensors(folder, names, dtype), strict=False, assign=True)
        loaded.tie_weights()  # loading assigned each name its own Parameter (over one tensor): one object again
    if weight_dtype == "int8":
        # the embedding's matrix stays bf16 for its lookups; a head tied to it gets an int8 copy of its own
        quantize_linears(loaded)
    # The conversions' temporaries went back to the heap, not to the system: an int8 third of SmolLM2 kept 210 MiB
    # more resident until trimmed.
    give_back_memory()
    return loaded


def used_parameters(model: PreTrainedModel, modules: Sequence[ModuleSpec]) -> list[list[str]]:
    """The parameters ``modules`` use, each as all the names it has in ``model`` (a head tied to the embedding
    has two). Found by building the modules on ``model``, so what a module uses is never listed twice."""
    from edge_lam.model.decompose import build_module, describe  # decompose needs no loading: no cycle at import

    arch = describe(model)
    used = {id(p) for spec in modules for p in build_module(arch, spec, share_weights=True).parameters()}
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in used:
            names.setdefault(id(parameter), []).append(name)
    return list(names.values())


def _read_tensors(folder: pathlib.Path, names: list[list[str]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each parameter's tensor read on its own from the folder's safetensors files, under every name it has."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = {key: folder / file for key, file in json.loads(index.read_text())["weight_map"].items()}
    else:
        with safe_open(folder / "model.safetensors", framework="pt") as single:
            files = dict.fromkeys(single.keys(), folder / "model.safetensors")
    missing = [aliases for aliases in names if not any(a in files for a in aliases)]
    if missing:
        raise ValueError(f"{folder} holds no tensor for parameter(s) {missing[:5]}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    by_file: dict[pathlib.Path, list[tuple[str, list[str]]]] = {}
    for aliases in names:
        key = next(a for a in aliases if a in files)
        by_file.setdefault(files[key], []).append((key, aliases))
    tensors: dict[str, torch.Tensor] = {}
    for file, wanted in by_file.items():
        with safe_open(file, framework="pt") as checkpoint:
            for key, aliases in wanted:
                tensors.update(dict.fromkeys(aliases, checkpoint.get_tensor(key).to(dtype)))
    return tensors


@functools.cache
def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_path(model))
