"""Pure cores between encoders and the LAM: token messages, the text encoder and the verbaliser."""

from __future__ import annotations

import numpy as np
import pytest

from edge_lam.encoders.text import TextEncoder
from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary
from edge_lam.model.loading import load_tokenizer
from edge_lam.reporting.verbalize import Observation, describe, report_prompt
from edge_lam.wire.tokens import (
    from_semantic_tokens,
    from_vocabulary_msg,
    to_semantic_tokens,
    to_vocabulary_msg,
)

WORDS = Vocabulary("test_encoder", "2", ("sky", "road", "car", "tree"))


def test_semantic_tokens_round_trip_keeps_ids_grid_scores_and_embedding():
    rng = np.random.default_rng(0)
    encoded = Encoded(
        ids=np.array([3, 1, 0, 2, 2, 1]), shape=(2, 3), scores=rng.random(6), embedding=rng.random((2, 8))
    )
    msg = to_semantic_tokens(encoded, robot_id="tb3", sensor="cam", modality="image", vocabulary=WORDS, seq=7)
    back = from_semantic_tokens(msg)
    assert (msg.encoder, msg.encoder_version, msg.seq, msg.robot_id) == ("test_encoder", "2", 7, "tb3")
    assert back.ids.tolist() == [3, 1, 0, 2, 2, 1] and back.shape == (2, 3)
    np.testing.assert_array_equal(back.scores, encoded.scores)
    np.testing.assert_array_equal(back.embedding, encoded.embedding)
    half = to_semantic_tokens(
        encoded, robot_id="", sensor="", modality="image", vocabulary=WORDS, seq=0, embedding_dtype="float16"
    )
    assert len(half.embedding.data) == 2 * 8 * 2
    np.testing.assert_allclose(from_semantic_tokens(half).embedding, encoded.embedding, atol=1e-3)


def test_tokens_without_scores_or_embedding_stay_without():
    msg = to_semantic_tokens(Encoded(ids=[1]), robot_id="", sensor="", modality="odometry", vocabulary=WORDS, seq=0)
    back = from_semantic_tokens(msg)
    assert back.scores is None and back.embedding is None and back.shape == ()


def test_vocabulary_round_trip_and_unknown_ids():
    back = from_vocabulary_msg(to_vocabulary_msg(WORDS, "image"))
    assert back == WORDS
    assert back.describe([2, 9]) == ["car", "<unknown 9>"]


def test_inconsistent_tokens_are_refused():
    with pytest.raises(ValueError, match="scores"):
        Encoded(ids=[1, 2], scores=[0.5])
    with pytest.raises(ValueError, match="grid"):
        Encoded(ids=[1, 2, 3], shape=(2, 2))


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(load_tokenizer("smollm2-135m-instruct"), name="smollm2-tokenizer", max_tokens=16)


def test_text_tokens_are_the_models_own_and_read_back(text_encoder):
    text = "Obstacle ahead, turning left."
    encoded = text_encoder.encode(text)
    assert encoded.ids.tolist() == load_tokenizer("smollm2-135m-instruct")(text, add_special_tokens=False).input_ids
    assert len(text_encoder.vocabulary.words) == 49152
    assert "".join(text_encoder.vocabulary.describe(encoded.ids)) == text


@pytest.mark.parametrize("text, reason", [("", "empty"), ("   \n", "empty"), ("word " * 40, "longer than")])
def test_bad_text_is_refused(text_encoder, text, reason):
    with pytest.raises(EncoderInputError, match=reason):
        text_encoder.encode(text)


def test_each_kind_of_tokens_is_verbalised_for_the_prompt():
    classes = Observation("image", "cam", Encoded(ids=[2, 3], scores=[0.7, 0.2]), WORDS)
    grid = Observation("image", "cam", Encoded(ids=[0, 0, 0, 1], shape=(2, 2)), WORDS)
    motion = Observation("odometry", "odom", Encoded(ids=[1, 1, 3]), WORDS)
    assert describe(classes) == "car (70%), tree (20%)"
    assert describe(grid) == "sky 75%, road 25%"
    assert describe(motion) == "road, tree"
    prompt = report_prompt([motion, classes])
    assert prompt.index("- image (cam): car (70%)") < prompt.index("- odometry (odom): road, tree")
    with pytest.raises(ValueError):
        report_prompt([])
