"""``Encoded`` and ``Vocabulary`` to and from their messages, in one place for every encoder node and subscriber.

Arrays go in as ``array.array`` built from bytes: rclpy accepts those as they are, while a numpy array or a list
would be walked element by element.
"""

from __future__ import annotations

import array

import numpy as np
from edge_lam_msgs.msg import SemanticTokens, Tensor
from edge_lam_msgs.msg import Vocabulary as VocabularyMsg
from std_msgs.msg import Header

from edge_lam.encoders.tokens import Encoded, Vocabulary
from edge_lam.wire.tensors import to_msg, to_numpy

__all__ = ["from_semantic_tokens", "from_vocabulary_msg", "to_semantic_tokens", "to_vocabulary_msg"]


def to_semantic_tokens(
    encoded: Encoded, *, robot_id: str, sensor: str, modality: str, vocabulary: Vocabulary, seq: int,
    embedding_dtype: str = "float32", header: Header | None = None, encode_seconds: float = 0.0,
) -> SemanticTokens:
    """The message; ``header`` is the sensor message's (an empty one when None)."""
    msg = SemanticTokens(header=header or Header(), encode_seconds=encode_seconds)
    msg.robot_id = robot_id
    msg.sensor = sensor
    msg.modality = modality
    msg.encoder = vocabulary.encoder
    msg.encoder_version = vocabulary.version
    msg.token_ids = array.array("I", encoded.ids.astype("<u4", copy=False).tobytes())
    msg.token_shape = array.array("I", np.asarray(encoded.shape, dtype="<u4").tobytes())
    if encoded.scores is not None:
        msg.scores = array.array("f", encoded.scores.astype("<f4", copy=False).tobytes())
    msg.embedding = (
        to_msg(encoded.embedding.astype(embedding_dtype, copy=False), name="embedding")
        if encoded.embedding is not None else Tensor()
    )
    msg.seq = seq
    return msg


def from_semantic_tokens(msg: SemanticTokens) -> Encoded:
    """The tokens of a message as arrays (the embedding as float32 whatever its wire dtype); ValueError when the
    message's parts disagree (grid, scores or embedding against the ids), for the caller to log and drop."""
    ids = np.frombuffer(msg.token_ids, dtype=np.uint32)
    scores = np.frombuffer(msg.scores, dtype=np.float32) if len(msg.scores) else None
    embedding = to_numpy(msg.embedding).astype(np.float32) if msg.embedding.shape else None
    return Encoded(ids=ids, shape=tuple(int(n) for n in msg.token_shape), scores=scores, embedding=embedding)


def to_vocabulary_msg(vocabulary: Vocabulary, modality: str) -> VocabularyMsg:
    msg = VocabularyMsg()
    msg.modality = modality
    msg.encoder = vocabulary.encoder
    msg.encoder_version = vocabulary.version
    msg.words = list(vocabulary.words)
    return msg


def from_vocabulary_msg(msg: VocabularyMsg) -> Vocabulary:
    return Vocabulary(encoder=msg.encoder, version=msg.encoder_version, words=tuple(msg.words))
