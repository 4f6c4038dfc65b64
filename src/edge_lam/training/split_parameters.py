"""The parameters both trainers share, declared the same way on the robot and on the edge: what they must agree on
(model, cut, LoRA), their learning rate and threads, and the four topics they meet on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rclpy.node import Node

from edge_lam.ros.parameters import declare
from edge_lam.training.adapters import LoraSettings
from edge_lam.training.compression import Codec, codec_from_spec

__all__ = ["SplitParameters", "declare_codec", "declare_split"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class SplitParameters:
    model: str
    cut_layer: int
    lora: LoraSettings
    learning_rate: float
    num_threads: int
    activations_topic: str
    gradients_topic: str
    adapters_topic: str
    global_adapter_topic: str

    def record(self) -> dict[str, Any]:
        """As the run's record in a ledger names them (the parameter names)."""
        return {"model": self.model, "cut_layer": self.cut_layer, "lora_rank": self.lora.rank,
                "lora_alpha": self.lora.alpha, "lora_target_modules": list(self.lora.target_modules),
                "learning_rate": self.learning_rate}


def declare_split(node: Node) -> SplitParameters:
    agree = "robots and edge must agree"
    split = SplitParameters(
        model=declare(node, "model", "smollm2-135m-instruct",
                      f"Model id from the cache, or a transformers folder (with its tokenizer); {agree}."),
        cut_layer=declare(node, "cut_layer", 4,
                          f"Robots train decoder layers [0, cut_layer), the edge the rest; {agree}."),
        lora=LoraSettings(
            declare(node, "lora_rank", 8, f"LoRA rank; {agree}."),
            declare(node, "lora_alpha", 16.0, f"LoRA alpha (the update is scaled by alpha / rank); {agree}."),
            tuple(declare(node, "lora_target_modules", ALL_LINEAR,
                          f"Linear layers inside each decoder layer that get adapters; {agree}.")),
        ),
        learning_rate=declare(node, "learning_rate", 2e-3, "AdamW learning rate of this side's adapters."),
        num_threads=declare(node, "num_threads", 1, "Torch threads."),
        activations_topic=declare(node, "activations_topic", "training/activations",
                                  "Activations, robots to the edge."),
        gradients_topic=declare(node, "gradients_topic", "training/gradients",
                                "Gradients, the edge to each robot (header.frame_id names it)."),
        adapters_topic=declare(node, "adapters_topic", "training/adapters", "Adapter updates, robots to the edge."),
        global_adapter_topic=declare(node, "global_adapter_topic", "training/global_adapter",
                                     "The edge's merged adapter, to the robots (latched)."),
    )
    if split.num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {split.num_threads}")
    return split


def declare_codec(node: Node, name: str, default: str, what: str) -> Codec:
    """A codec parameter: ``what`` travels in it (ValueError at start for a codec that does not exist)."""
    return codec_from_spec(declare(node, name, default, f"Codec of {what}: fp32, fp16, int8 or topk:F."))
