"""Models and data that edge_lam prepares once into a cache folder (no model hub is reached at run time)."""

from edge_lam.assets.cache import (
    AssetMissingError,
    cache_dir,
    efficientnet_lite0_onnx,
    evo_bags_dir,
    gemma3_dir,
    smollm2_dir,
)

__all__ = ["AssetMissingError", "cache_dir", "efficientnet_lite0_onnx", "evo_bags_dir", "gemma3_dir", "smollm2_dir"]
