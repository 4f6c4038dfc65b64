"""The gateway's pure parts: sampling, request checks, prompt tokens and the text stream with stop strings."""

from __future__ import annotations

import math

import pytest
import torch

from edge_lam.chain.generation import Conversation, Limits, TextStream, check_request, prompt_ids
from edge_lam.chain.requests import Options
from edge_lam.model.loading import load_tokenizer
from edge_lam.model.sampling import Sampling, choose_token, verify_tokens


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
    greedy = Options(max_new_tokens=10)
    assert check_request("hi", [], greedy, limits) is None
    assert "empty" in check_request("  ", [], greedy, limits)
    assert "max_new_tokens" in check_request("hi", [], Options(max_new_tokens=10**6), limits)
    assert "max_new_tokens" in check_request("hi", [], Options(max_new_tokens=0), limits)
    assert "vocabulary" in check_request("", [5, 100], greedy, limits)
    assert "temperature" in check_request("hi", [], Options(do_sample=True, temperature=-1.0), limits)
    assert "top_p" in check_request("hi", [], Options(do_sample=True, top_p=1.5), limits)


@pytest.mark.parametrize(("options", "message"), [
    (Options(do_sample=True, temperature=1e-45), "temperature"),
    (Options(do_sample=True, top_p=1e-45, temperature=1e-45), "temperature"),
    (Options(do_sample=True, top_p=0.0), "top_p"),
    (Options(do_sample=True, temperature=math.nan), "temperature"),
    (Options(do_sample=True, temperature=math.inf), "temperature"),
    (Options(do_sample=True, top_p=math.nan), "top_p"),
])
def test_sampling_options_the_sampler_cannot_honour_are_refused(options, message):
    assert message in check_request("hi", [], options, Limits(vocab_size=100))


def test_sampling_at_temperature_zero_is_greedy_and_accepted():
    assert check_request("hi", [], Options(do_sample=True, temperature=0.0), Limits(vocab_size=100)) is None
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert choose_token(logits, True, 0.0, 1.0, 0, 0) == int(logits.argmax())


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-45, 1e-45), (1e-45, 1.0), (1.0, 1e-45), (math.nan, 1.0),
                                                    (1.0, math.nan), (math.inf, 1.0), (-1.0, -1.0)])
def test_the_sampler_picks_the_argmax_of_a_degenerate_distribution(temperature, top_p):
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    assert choose_token(logits, True, temperature, top_p, 0, 0) == int(logits.argmax())
    assert verify_tokens(logits.repeat(2, 1), [int(logits.argmax())], Sampling(True, temperature, top_p), 0) == \
        [int(logits.argmax())] * 2
    nan = logits.clone()
    nan[:10] = math.nan
    assert choose_token(nan, True, 1.0, 1.0, 0, 0) == int(torch.nan_to_num(nan, nan=-math.inf).argmax())


def test_prompts_and_stop_strings_beyond_their_bounds_are_refused_before_tokenising():
    limits = Limits(vocab_size=100, max_prompt_chars=1000, max_stop_strings=4, max_stop_chars=8)
    assert "max_prompt_chars" in check_request("x" * 1001, [], Options(), limits)
    assert check_request("x" * 1000, [], Options(), limits) is None
    assert "max_stop_strings" in check_request("hi", [], Options(stop=("a",) * 5), limits)
    assert "max_stop_chars" in check_request("hi", [], Options(stop=("a" * 9,)), limits)
    assert check_request("hi", [], Options(stop=("a" * 8,) * 4), limits) is None
    assert "context" in check_request("", [1] * 2049, Options(), Limits(vocab_size=100, max_context_tokens=2048))


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


class CharTokenizer:
    """One token per character (ids are code points): what TextStream needs of a tokenizer, to count its work."""

    def __init__(self) -> None:
        self.decoded = 0  # characters decoded so far

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decoded += len(ids)
        return "".join(map(chr, ids))


def test_many_long_stop_strings_still_cut_at_the_first_one_and_hold_back_only_a_possible_start():
    stops = [f"{i:04d}" + "z" * 250 for i in range(15)] + ["STOP here"]
    stream = TextStream(CharTokenizer(), stops)
    text = "abc " * 500 + "STOP her"
    shown = "".join(stream.push(ord(c)) for c in text)
    assert shown == "abc " * 500 and not stream.stopped  # "STOP her" may begin the stop string: held back
    shown += "".join(stream.push(ord(c)) for c in "e and more")
    assert stream.stopped and stream.text == "abc " * 500 and shown + stream.flush() == "abc " * 500


def test_a_stop_string_is_found_across_tokens_after_a_long_text_and_a_false_start():
    stream = TextStream(CharTokenizer(), ["aab"])
    shown = "".join(stream.push(ord(c)) for c in "x" * 3000 + "aaa")
    assert shown == "x" * 3000 + "a" and not stream.stopped  # "aa" may begin "aab"
    stream.push(ord("b"))
    assert stream.stopped and stream.text == "x" * 3000 + "a"
