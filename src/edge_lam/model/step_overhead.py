"""What a decode step costs beyond its bytes and FLOPs: the Python and kernel dispatch of the library's forward
(norms, rotary embeddings, masks, the cache's bookkeeping, a dozen small kernels a layer), the same whatever the
width of the layers.

Measured, not assumed: the model's own architecture is built at a tiny width (its layer count, family and code
kept; hidden size 64, one head, a small vocabulary), so that its weights are a few kilobytes and a decode step's
time is all overhead, and decode steps are timed through a shard's core as a shard runs them (one torch thread).
SmolLM2's 30 layers cost about 0.4-1 ms each this way on the 2-core machine of doc/benchmarks.md: as much as a
third of a decode step that the roofline alone would leave out.

The other measured correction is how fast the model's own matrices stream (``read_efficiency``): a decoder layer's
matrices are a few megabytes, read at less than the host's yardstick of large ones.
"""

from __future__ import annotations

import statistics
import time
import uuid

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from edge_lam.descriptors import ModuleSpec
from edge_lam.model.precision import compute_dtype, quantize_linears
from edge_lam.model.sampling import Sampling

__all__ = ["TINY", "read_efficiency", "step_overhead_s"]

# The width the overhead is measured at: sizes every decoder family's config names alike.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1, "num_key_value_heads": 1,
        "head_dim": 64, "vocab_size": 256}


def step_overhead_s(config: PretrainedConfig, weight_dtype: str = "float32", steps: int = 12,
                    prompt_tokens: int = 8) -> float:
    """Seconds of overhead per unit (embedding, each block, head) of one decode step: the median decode step of
    the model's architecture at :data:`TINY` width, in ``weight_dtype``, over its units."""
    from edge_lam.chain.shard import ShardCore  # the shard's own step: its bookkeeping is overhead too

    tiny = type(config).from_dict({**config.to_dict(), **{k: v for k, v in TINY.items() if hasattr(config, k)}})
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as a shard runs
    try:
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(tiny, dtype=compute_dtype(weight_dtype)).eval()
        if weight_dtype == "int8":
            quantize_linears(model)
        layers = tiny.get_text_config(decoder=True).num_hidden_layers
        core = ShardCore(model, [ModuleSpec("embedding"), ModuleSpec("blocks", 0, layers), ModuleSpec("head")])
        session = uuid.uuid4().hex
        prompt = torch.arange(prompt_tokens, dtype=torch.int64).view(1, -1) % tiny.vocab_size
        token = core.step({"input_ids": prompt}, session, 0, True, Sampling(), 0).tensors["next_token"].view(1, 1)
        times = []
        for step in range(steps):
            start = time.perf_counter()
            out = core.step({"input_ids": token}, session, prompt_tokens + step, False, Sampling(), step + 1)
            times.append(time.perf_counter() - start)
            token = out.tensors["next_token"].view(1, 1)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times) / (layers + 2)


def read_efficiency(model: torch.nn.Module, weight_dtype: str = "float32", total_bytes: int = 128 * 2**20,
                    repeats: int = 7) -> float:
    """How fast a decode step streams this model's own matrices, as a fraction of the host yardstick's bandwidth
    (``fleet.host_measurement.reference_bandwidth_gbps``, fp32 4 MiB matrices): matrix-vector products over one
    decoder layer's matrix shapes at ``weight_dtype`` (int8: the shard's own Int8Linear), cycled until they fill
    ``total_bytes``, the fastest of ``repeats`` passes, over the yardstick measured right after. SmolLM2's layers
    (0.4-3.5 MB matrices) read at about two thirds of it here; a larger model's at about all of it."""
    from edge_lam.fleet.host_measurement import reference_bandwidth_gbps
    from edge_lam.model.decompose import describe
    from edge_lam.model.precision import Int8Linear

    arch = describe(model)
    shapes = [tuple(m.weight.shape) for m in getattr(arch.base, arch.layers)[0].modules()
              if isinstance(m, torch.nn.Linear)]
    if not shapes:
        return 1.0  # no linear layers to stream (GPT-2's Conv1D): the yardstick stands
    dtype = compute_dtype(weight_dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers, nbytes = [], 0
        while nbytes < total_bytes:
            for rows, cols in shapes:
                linear = torch.nn.Linear(cols, rows, bias=False, dtype=dtype)
                torch.nn.init.constant_(linear.weight, 0.01)
                layers.append(Int8Linear(linear) if weight_dtype == "int8" else linear)
                nbytes += rows * cols * (1 if weight_dtype == "int8" else dtype.itemsize)
        vectors = {cols: torch.full((1, cols), 0.5, dtype=dtype) for _, cols in shapes}
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                for layer in layers:
                    layer(vectors[layer.in_features])
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return nbytes / min(times[1:]) / 1e9 / reference_bandwidth_gbps(threads=1)
