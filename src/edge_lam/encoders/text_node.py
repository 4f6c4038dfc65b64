"""Text encoder node: ``std_msgs/String`` on ``text`` to SemanticTokens on ``tokens/text``."""

from __future__ import annotations

import time

from std_msgs.msg import String

from edge_lam.encoders.encoder_node import EncoderNode
from edge_lam.encoders.text import MAX_CHARS, TextEncoder
from edge_lam.model.loading import load_tokenizer
from edge_lam.ros.bounds import Bounds
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare


class TextEncoderNode(EncoderNode):
    def __init__(self, node_name: str = "text_encoder", **kwargs) -> None:
        super().__init__(node_name, modality="text", default_sensor="text", **kwargs)
        model = declare(self, "model", "smollm2-135m-instruct", "Model whose tokenizer gives the token ids.")
        max_tokens = declare(self, "max_tokens", 512, "Longest text accepted, in tokens; longer text is rejected.",
                             on_change=lambda value: setattr(self._core, "max_tokens", value), low=1)
        max_chars = declare(self, "max_text_chars", MAX_CHARS,
                            "Longest text accepted, in characters; longer text is rejected before it is tokenized.",
                            on_change=lambda value: setattr(self._core, "max_chars", value), low=1)
        self._core = TextEncoder(load_tokenizer(model), name=f"{model}-tokenizer", max_tokens=max_tokens,
                                 max_chars=max_chars)
        self.publish_vocabulary(self._core.vocabulary)
        self._last = (0, 0)  # characters and tokens of the last text encoded: how close texts come to the bounds
        bounds = Bounds(self)
        bounds.add("text_chars", lambda: self._last[0], lambda: self._core.max_chars)
        bounds.add("text_tokens", lambda: self._last[1], lambda: self._core.max_tokens)
        self.create_subscription(String, "text", self.encode, self.input_qos)

    def encode(self, msg: String) -> None:
        started = time.perf_counter()
        try:
            encoded = self._core.encode(msg.data)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("text", err)
            return
        self._last = (len(msg.data), encoded.ids.size)
        self.publish_tokens(encoded, None, started)


def main(args: list[str] | None = None) -> None:
    spin_node(TextEncoderNode, args)
