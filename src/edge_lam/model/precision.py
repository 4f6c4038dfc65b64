"""Weight precision of a shard: fp32, bf16, fp16, or int8 weight-only on torch's own CPU kernel.

Decoding reads every weight once per token, so its speed follows the bytes of the weights: bf16 halves them, int8
weight-only quarters the matrices'. int8 keeps one int8 row and one scale per output channel of every linear layer
(symmetric, per channel) and multiplies with ``torch.ops.aten._weight_int8pack_mm`` on bf16 activations; embeddings
and norms stay bf16. That kernel returns garbage, or ends the process, when the input size is not a multiple of 16
(torch 2.13, checked here), so such a layer keeps its bf16 weights.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_lam.descriptors import WEIGHT_DTYPES, check_weight_dtype

__all__ = ["WEIGHT_DTYPES", "Int8Linear", "compute_dtype", "quantize_linears", "weight_bytes_per_param"]

_INT8_K_MULTIPLE = 16  # in_features the int8 kernel handles


def compute_dtype(weight_dtype: str) -> torch.dtype:
    """The dtype activations and the weights that are not quantized run in (ValueError naming the choices)."""
    return torch.bfloat16 if check_weight_dtype(weight_dtype) == "int8" else getattr(torch, weight_dtype)


def weight_bytes_per_param(weight_dtype: str, in_matrix: bool) -> float:
    """Bytes one parameter holds: of a linear layer's matrix (``in_matrix``) or of anything else. An int8 matrix
    also keeps a bf16 scale per row, which is left out here (under 0.4% for rows of 576)."""
    if weight_dtype == "int8":
        return 1.0 if in_matrix else 2.0
    return float(compute_dtype(weight_dtype).itemsize)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and a scale per output channel; activations in, activations out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        dtype = torch.bfloat16
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` whose weight holds values (not on the meta device) and whose
    input size the kernel handles by an Int8Linear. Returns the number replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Linear) and child.weight.device.type != "meta"
                    and child.in_features % _INT8_K_MULTIPLE == 0):
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
