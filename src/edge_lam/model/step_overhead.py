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
    (``fleet.host_measurement.reference_bandwidth_gbps``: fp32 4 MiB matrices): matrix-vector products over one
    decoder layer's matrix shapes at ``weight_dtype`` (int8: the shard's own Int8Linear), cycled until they fill
    ``total_bytes``, against the yardstick's passes over as many bytes. The two kinds of pass alternate and the
    fastest of ``repeats`` of each counts, so that the machine's load weighs on both alike. ``model`` may be on the
    meta device: only its shapes are read. SmolLM2's layers (0.4-3.5 MB matrices) read at 0.7-0.8 of the yardstick
    in fp32 here, 0.58 in bf16 and 0.25-0.3 through the int8 kernel (bytes per second)."""
    from edge_lam.model.decompose import describe

    arch = describe(model)
    shapes = [tuple(m.weight.shape) for m in getattr(arch.base, arch.layers)[0].modules()
              if isinstance(m, torch.nn.Linear)]
    if not shapes:
        return 1.0  # no linear layers to stream (GPT-2's Conv1D): the yardstick stands
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _read_share(shapes, weight_dtype, total_bytes, repeats)
    finally:
        torch.set_num_threads(previous)


def _read_share(shapes: list[tuple[int, int]], weight_dtype: str, total_bytes: int, repeats: int) -> float:
    """read_efficiency's passes, on the CPU whatever device the caller made the default."""
    from edge_lam.model.precision import Int8Linear

    dtype = compute_dtype(weight_dtype)
    with torch.device("cpu"), torch.inference_mode():
        layers, nbytes = [], 0
        while nbytes < total_bytes:
            for rows, cols in shapes:
                linear = torch.nn.Linear(cols, rows, bias=False, dtype=dtype)
                torch.nn.init.constant_(linear.weight, 0.01)
                layers.append(Int8Linear(linear) if weight_dtype == "int8" else linear)
                nbytes += rows * cols * (1 if weight_dtype == "int8" else dtype.itemsize)
        vectors = {cols: torch.full((1, cols), 0.5, dtype=dtype) for _, cols in shapes}
        yardstick = [torch.full((1024, 1024), 0.5) for _ in range(max(1, total_bytes // (4 * 2**20)))]
        unit = torch.full((1, 1024), 0.5)
        own, reference = [], []
        for _ in range(repeats + 1):  # the first of each warms up
            start = time.perf_counter()
            for layer in layers:
                layer(vectors[layer.in_features])
            own.append(time.perf_counter() - start)
            start = time.perf_counter()
            for matrix in yardstick:
                torch.nn.functional.linear(unit, matrix)
            reference.append(time.perf_counter() - start)
    return (nbytes / min(own[1:])) / (len(yardstick) * 4 * 2**20 / min(reference[1:]))
