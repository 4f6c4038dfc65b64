"""The gateway's pure parts: sampling, request checks, prompt tokens and the text stream with stop strings."""

from __future__ import annotations

import pytest
import torch

from edge_lam.chain.generation import Conversation, Limits, TextStream, check_request, prompt_ids
from edge_lam.model.loading import load_tokenizer
from edge_lam.model.sampling import choose_token


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


def test_greedy_is_argmax_and_sampling_is_reproducible_per_seed_and_step():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert choose_token(logits, False, 1.0, 1.0, 0, 0) == int(logits.argmax())
    draws = [choose_token(logits, True, 1.0, 1.0, seed=7, step=s) for s in range(20)]
    assert draws == [choose_token(logits, True, 1.0, 1.0, seed=7, step=s) for s in range(20)]
    assert draws != [choose_token(logits, True, 1.0, 1.0, seed=8, step=s) for s in range(20)]
    assert len(set(draws)) > 5  # a flat-ish distribution really is sampled


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0])  # the first two hold about 99% of the mass
    draws = {choose_token(logits, True, 1.0, 0.9, seed=1, step=s) for s in range(200)}
    assert draws == {0, 1}
    assert {choose_token(logits, True, 1.0, 1e-6, seed=1, step=s) for s in range(50)} == {0}


def test_requests_are_checked():
    limits = Limits(vocab_size=100, max_new_tokens=64)
    assert check_request("hi", [], 10, False, 1.0, 1.0, limits) is None
    assert "empty" in check_request("  ", [], 10, False, 1.0, 1.0, limits)
    assert "max_new_tokens" in check_request("hi", [], 10**6, False, 1.0, 1.0, limits)
    assert "max_new_tokens" in check_request("hi", [], 0, False, 1.0, 1.0, limits)
    assert "vocabulary" in check_request("", [5, 100], 10, False, 1.0, 1.0, limits)
    assert "temperature" in check_request("hi", [], 10, True, 0.0, 1.0, limits)
    assert "top_p" in check_request("hi", [], 10, True, 1.0, 1.5, limits)


def test_chat_prompts_extend_the_session_tokens(tokenizer):
    conversation = Conversation()
    ids, messages = prompt_ids(tokenizer, conversation, "Hello", [], apply_chat_template=True)
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    conversation.tokens = ids
    conversation.messages = [*messages, {"role": "assistant", "content": "Hi."}]
    again, _ = prompt_ids(tokenizer, conversation, "Bye", [], apply_chat_template=True)
    assert again[:len(ids)] == ids and tokenizer.decode(again[len(ids):]).count("Bye") == 1
    raw, _ = prompt_ids(tokenizer, conversation, "", [1, 2, 3], apply_chat_template=True)
    assert raw == [*ids, 1, 2, 3]


def stream_all(tokenizer, text: str, stop: list[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop)
    deltas = []
    for token in tokenizer(text)["input_ids"]:
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    return deltas, stream


def test_text_stream_cuts_at_a_stop_string_and_never_shows_part_of_it(tokenizer):
    deltas, stream = stream_all(tokenizer, "The robot turns left. END of report", ["END"])
    assert stream.stopped and "".join(deltas) == "The robot turns left. "
    assert not any("E" in d for d in deltas)  # the start of "END" was held back, not shown then retracted


def test_text_stream_without_stop_strings_gives_the_decoded_text(tokenizer):
    text = "Déjà vu: 机器人 🤖 moves."
    deltas, stream = stream_all(tokenizer, text, [])
    assert "".join(deltas) == text and not stream.stopped
    assert all("\ufffd" not in d for d in deltas)  # no half characters shown
