"""Camera encoder node: ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8) on ``image_raw`` and
``sensor_msgs/CompressedImage`` (jpeg, png) on ``image_raw/compressed`` to SemanticTokens on ``tokens/image``.

``encoder`` picks the core: ``efficientnet_lite0`` gives the top-k ImageNet classes with their probabilities and the
pooled 1280-d embedding (about 7 ms a frame here); ``patch_vq`` gives a grid of patch-codebook ids (under 1 ms).
"""

from __future__ import annotations

import time

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from edge_lam.assets.cache import patch_codebook_npz
from edge_lam.encoders.classifier import EfficientNetClassifier
from edge_lam.encoders.encoder_node import EncoderNode
from edge_lam.encoders.image import MAX_PIXELS, compressed_to_rgb, image_to_rgb
from edge_lam.encoders.patches import PatchTokenizer
from edge_lam.ros.bounds import Bounds
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare

ENCODERS = ("efficientnet_lite0", "patch_vq")


class CameraEncoderNode(EncoderNode):
    def __init__(self, node_name: str = "camera_encoder", **kwargs) -> None:
        super().__init__(node_name, modality="image", default_sensor="camera", **kwargs)
        encoder = declare(self, "encoder", "efficientnet_lite0", f"Which encoder: {' or '.join(ENCODERS)}.")
        top_k = declare(self, "top_k", 5, "efficientnet_lite0: how many classes per frame.")
        threads = declare(self, "num_threads", 1, "efficientnet_lite0: onnxruntime intra-op threads.")
        self._embedding_dtype = declare(
            self, "embedding_dtype", "float32",
            "Wire dtype of the embedding: float32, float16 (half the bytes) or none (not sent: for an encoder whose "
            "tokens cross a link to a reader of words, such as the reporter).",
        )
        image_topic = declare(self, "image_topic", "image_raw", "sensor_msgs/Image input; empty to not subscribe.")
        compressed_topic = declare(
            self, "compressed_topic", "image_raw/compressed", "CompressedImage input; empty: none."
        )
        self._max_pixels = declare(
            self, "max_image_pixels", MAX_PIXELS,
            "Most pixels (width x height) a frame may have; larger ones are refused, compressed ones before decoding "
            "(by the size their header declares).",
            on_change=self._set_max_pixels, low=1,
        )
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got '{encoder}'")
        if self._embedding_dtype not in ("float32", "float16", "none"):
            raise ValueError(f"embedding_dtype must be float32, float16 or none, got '{self._embedding_dtype}'")
        if encoder == "efficientnet_lite0":
            self._core = EfficientNetClassifier(threads=threads, top_k=top_k)
        else:
            self._core = PatchTokenizer.from_file(patch_codebook_npz())
        self.publish_vocabulary(self._core.vocabulary)
        self._last_pixels = 0  # of the last frame encoded: how close frames come to max_image_pixels
        Bounds(self).add("image_pixels", lambda: self._last_pixels, lambda: self._max_pixels)
        if image_topic:
            self.create_subscription(Image, image_topic, self.encode_raw, self.input_qos)
        if compressed_topic:
            self.create_subscription(CompressedImage, compressed_topic, self.encode_compressed, self.input_qos)

    def _set_max_pixels(self, value: int) -> None:
        self._max_pixels = value

    def encode_raw(self, msg: Image) -> None:
        started = time.perf_counter()
        try:
            frame = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, self._max_pixels)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("image", err, msg.header.stamp)
            return
        self._encode(frame, msg, started)

    def encode_compressed(self, msg: CompressedImage) -> None:
        started = time.perf_counter()
        try:
            frame = compressed_to_rgb(msg.format, msg.data, self._max_pixels)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("compressed image", err, msg.header.stamp)
            return
        self._encode(frame, msg, started)

    def _encode(self, frame: np.ndarray, msg: Image | CompressedImage, started: float) -> None:
        self._last_pixels = frame.shape[0] * frame.shape[1]
        try:
            encoded = self._core.encode(frame)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("image", err, msg.header.stamp)
            return
        if self._embedding_dtype == "none":
            encoded.embedding = None
            self.publish_tokens(encoded, msg.header, started)
        else:
            self.publish_tokens(encoded, msg.header, started, self._embedding_dtype)


def main(args: list[str] | None = None) -> None:
    spin_node(CameraEncoderNode, args)
