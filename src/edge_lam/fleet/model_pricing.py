"""What the coordinator places, priced from the model's shapes: the chain's units, its number of layers and the
units of its trained early exits. Each unit of the chain also carries the dispatch overhead of a decode step,
measured on the model's architecture at a tiny width (``model.step_overhead``) and carried as the FLOPs that take
as long at the reference GFLOP/s measured beside it (``fleet.host_measurement``), and the share of the advertised
bandwidth its own matrices stream at, at the plan's weight dtype (``read_efficiency``).

Pricing builds the model on torch's meta device, which needs torch and transformers; the coordinator needs neither
for anything else, and importing them costs it seconds at start and 1-2 s of interpreter teardown at exit. So
``price_in_child`` prices in a child process of its own and hands back plain units: the coordinator never imports
torch (test/test_shutdown.py checks it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from dataclasses import dataclass

from edge_lam.placement.types import Unit

__all__ = ["PricedModel", "model_chain", "price_in_child", "price_model"]


@dataclass(frozen=True)
class PricedModel:
    """The units of the chain, its number of layers, the unit of each trained exit by layer, and the overhead of a
    decode step per unit in seconds (where the coordinator measured it) with its GFLOP/s yardstick."""

    units: tuple[Unit, ...]
    num_layers: int
    exits: dict[int, Unit]
    step_overhead_s: float = 0.0
    reference_gflops: float = 0.0
    overhead_error: str = ""  # why the overhead could not be measured (then it is priced at none)
    read_efficiency: float = 1.0  # the model's matrices stream at this share of the advertised bandwidth


def model_chain(model: str, wire_dtype: str, weight_dtype: str = "float32") -> tuple[list[Unit], int]:
    """The model's units (weights in ``weight_dtype``) and number of layers (imports torch and transformers: call
    it in a child or a test)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edge_lam.model.costs import chain_units
    from edge_lam.model.loading import model_path

    config = AutoConfig.from_pretrained(model_path(model))
    with torch.device("meta"):
        shapes = AutoModelForCausalLM.from_config(config)
    units = chain_units(shapes, wire_dtype, weight_dtype)
    return units, shapes.config.get_text_config(decoder=True).num_hidden_layers


def price_model(model: str, wire_dtype: str, with_exits: bool, weight_dtype: str = "float32") -> PricedModel:
    """The chain and, with ``with_exits``, every trained exit; the exits' units count the head's matrix as held
    already when the embedding is tied to it (the robot, first in the chain, holds the embedding)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edge_lam.fleet.host_measurement import reference_gflops
    from edge_lam.model.costs import exit_unit
    from edge_lam.model.exits import available_exits
    from edge_lam.model.loading import model_path
    from edge_lam.model.step_overhead import read_efficiency, step_overhead_s

    units, num_layers = model_chain(model, wire_dtype, weight_dtype)
    try:
        overhead_s, why = step_overhead_s(AutoConfig.from_pretrained(model_path(model)), weight_dtype), ""
    except Exception as error:  # a family whose config does not shrink: placed on the roofline alone, and said so
        overhead_s, why = 0.0, f"{type(error).__name__}: {error}"
    gflops = reference_gflops(repeats=21, threads=1)  # as a host agent measures its own
    with torch.device("meta"):  # shapes only; the matrices it times are made on the CPU
        shapes = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path(model)))
    efficiency = read_efficiency(shapes, weight_dtype)
    units = [dataclasses.replace(u, overhead_flops_per_step=overhead_s * gflops * 1e9, read_efficiency=efficiency)
             for u in units]
    exits: dict[int, Unit] = {}
    if with_exits and (layers := available_exits(model)):
        config = AutoConfig.from_pretrained(model_path(model))
        with torch.device("meta"):
            shapes = AutoModelForCausalLM.from_config(config)
        shares_head = bool(getattr(config, "tie_word_embeddings", False))
        exits = {layer: exit_unit(shapes, layer, shares_head=shares_head) for layer in layers}
    return PricedModel(tuple(units), num_layers, exits, overhead_s, gflops, why, efficiency)


def price_in_child(model: str, wire_dtype: str, with_exits: bool, weight_dtype: str = "float32") -> PricedModel:
    """``price_model`` run in a fresh (spawned) child process; its errors are raised here."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(price_model, model, wire_dtype, with_exits, weight_dtype).result()
