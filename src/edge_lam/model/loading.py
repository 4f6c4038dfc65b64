"""Loading the model a chain runs, from the cache folder that setup prepared (never from a hub)."""

from __future__ import annotations

import functools
import pathlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from edge_lam.assets import smollm2_dir

__all__ = ["MODELS", "load_model", "load_tokenizer", "model_path"]

# Model ids a chain can name instead of a folder.
MODELS = {"smollm2-135m-instruct": smollm2_dir}


def model_path(model: str) -> pathlib.Path:
    """A known model id, or a folder holding a transformers model."""
    if model in MODELS:
        return MODELS[model]()
    path = pathlib.Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{model}' is neither a known model id {sorted(MODELS)} nor a model folder")
    return path


def load_model(model: str) -> PreTrainedModel:
    """The model in fp32 and eval mode. Not cached: a shard keeps only the parts it built, the rest is freed."""
    transformers_logging.disable_progress_bar()  # a progress bar per load would flood the node's log
    return AutoModelForCausalLM.from_pretrained(model_path(model), dtype=torch.float32).eval()


@functools.cache
def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_path(model))
