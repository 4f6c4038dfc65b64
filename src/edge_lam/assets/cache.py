"""Where prepared models and data live, and a clear error when they are not there yet.

The cache folder is ``$EDGE_LAM_CACHE`` (the Makefile points it at ``.cache/`` in the repository) or
``~/.cache/edge_lam``. Each prepared asset is a folder that holds a ``.complete`` marker once it is whole, so a
preparation that was cut off is redone rather than half used.
"""

from __future__ import annotations

import os
import pathlib

COMPLETE_MARKER = ".complete"


class AssetMissingError(FileNotFoundError):
    """A model or data set was asked for before setup prepared it."""


def cache_dir() -> pathlib.Path:
    """The root of the cache folder (not created here)."""
    configured = os.environ.get("EDGE_LAM_CACHE")
    if configured:
        return pathlib.Path(configured).expanduser().resolve()
    return pathlib.Path.home() / ".cache" / "edge_lam"


def asset_dir(*parts: str) -> pathlib.Path:
    """The folder of one asset inside the cache."""
    return cache_dir().joinpath(*parts)


def is_complete(folder: pathlib.Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def require(folder: pathlib.Path, what: str) -> pathlib.Path:
    """Return ``folder`` if it holds a complete asset, else raise AssetMissingError saying how to make it."""
    if not is_complete(folder):
        raise AssetMissingError(
            f"{what} is not prepared in {folder}; run `make setup` (or `edge-lam prepare`) first"
        )
    return folder


def smollm2_dir() -> pathlib.Path:
    """SmolLM2-135M-Instruct as a transformers folder (safetensors, config, tokenizer, chat template)."""
    return require(asset_dir("models", "smollm2-135m-instruct"), "SmolLM2-135M-Instruct")


GEMMA3_ID = "gemma3-270m"
GEMMA_SKIPPED_MARKER = f"{GEMMA3_ID}.skipped"  # beside the model's folder when setup skipped Gemma


def gemma3_folder() -> pathlib.Path:
    return asset_dir("models", GEMMA3_ID)


def gemma3_skipped() -> bool:
    """Setup skipped Gemma 3 270M (``--skip-gemma`` or ``EDGE_LAM_SKIP_GEMMA``) and it is not prepared."""
    return not is_complete(gemma3_folder()) and (gemma3_folder().parent / GEMMA_SKIPPED_MARKER).is_file()


def gemma3_dir() -> pathlib.Path:
    """Gemma 3 270M (base, not instruction-tuned) as a transformers folder (safetensors, config, tokenizer), unless
    setup skipped it: its terms of use are the package's data/GEMMA_TERMS.html."""
    if gemma3_skipped():
        raise AssetMissingError(
            f"Gemma 3 270M was skipped at setup (--skip-gemma or EDGE_LAM_SKIP_GEMMA); to use it, accept the "
            f"Gemma terms of use and run `edge-lam prepare` without the switch (it goes to {gemma3_folder()})"
        )
    return require(gemma3_folder(), "Gemma 3 270M")


def efficientnet_lite0_onnx() -> pathlib.Path:
    """EfficientNet-Lite0 (ImageNet weights) as ONNX: input ``image`` [N, 3, 224, 224], outputs ``logits`` [N, 1000]
    and ``embedding`` [N, 1280] (the pooled features the classifier head reads).

    The folder is versioned (``-v2`` added the embedding output) so a cache made by an older setup is rebuilt.
    """
    return require(asset_dir("models", "efficientnet-lite0-v2"), "EfficientNet-Lite0") / "model.onnx"


def skimage_photos_dir() -> pathlib.Path:
    """Real photos from scikit-image's wheel (astronaut, chelsea, coffee, rocket, ...): its PNG/JPEG files, pixels
    untouched (a malformed colour profile is dropped so libpng stays quiet)."""
    return require(asset_dir("data", "skimage-photos"), "scikit-image's photos")


def patch_codebook_npz() -> pathlib.Path:
    """The patch tokenizer's k-means codebook, trained on the scikit-image photos (see encoders/codebook.py)."""
    return require(asset_dir("models", "patch-vq"), "the patch codebook") / "codebook.npz"


def camera_bag_dir() -> pathlib.Path:
    """A rosbag2 (MCAP) camera recording made from the photos: 640x480 JPEG frames at 10 Hz (CompressedImage)."""
    return require(asset_dir("data", "camera-bag"), "the camera bag")


def evo_bags_dir() -> pathlib.Path:
    """The real bags from evo's test data: nav2_turtlebot.mcap, tf_example/ (sqlite3) and two ROS 1 bags."""
    return require(asset_dir("data", "evo"), "evo's bags")


def air_channels_folder() -> pathlib.Path:
    """Where setup writes the air-interface example's channel set (versioned: a new recipe makes a new folder)."""
    from edge_lam.air.channels import SET_VERSION  # numpy only; sionna is imported when a set is made

    return asset_dir("data", f"air-channels-v{SET_VERSION}")


def air_channels_dir() -> pathlib.Path:
    """The CDL channel set of the air-interface example (:mod:`edge_lam.air.channels`): splits as .npz files."""
    return require(air_channels_folder(), "the air-interface channel set")


EXITS_VERSION = "v2"  # bumped when the exits' training recipe changes, so a cache made by an older setup is rebuilt
EXIT_MODEL = "smollm2-135m-instruct"  # the model whose early exits setup trains (prepare/exits.py); no other has any


def exits_folder(model: str) -> pathlib.Path:
    """Where a model's trained early exits live (not required here: a model without exits is normal), by the
    model's id or the name of its folder."""
    return asset_dir("models", f"{pathlib.Path(model).name}-exits-{EXITS_VERSION}")
