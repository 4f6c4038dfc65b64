"""The gateway's text parts: checking requests, building prompt tokens, and streaming text with stop strings.

No ROS here: the gateway core (``edge_lam.chain.gateway``) calls these with its requests' values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_lam.chain.requests import Options
from edge_lam.descriptors import adapter_name_problem
from edge_lam.model.sampling import check_sampling

__all__ = ["Conversation", "Limits", "TextStream", "check_request", "prompt_ids"]


@dataclass(frozen=True)
class Limits:
    """What the gateway accepts."""

    vocab_size: int
    max_new_tokens: int = 1024
    max_context_tokens: int = 2048
    max_queued_requests: int = 32  # held at once (running or waiting); beyond: refused as busy
    max_prompt_chars: int = 32768  # checked before tokenising: a 1 MB prompt costs no tokenizer time
    max_stop_strings: int = 16
    max_stop_chars: int = 256  # per stop string: the text stream looks back this far for one


@dataclass
class Conversation:
    """A session as the gateway sees it: the chat so far and the token ids its KV caches hold."""

    messages: list[dict[str, str]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def check_request(prompt: str, input_token_ids: Sequence[int], options: Options, limits: Limits) -> str | None:
    """Why the request cannot be served, or None when it can. Only sizes and values: nothing here tokenises, so a
    huge request costs no more than its length to refuse."""
    if len(prompt) > limits.max_prompt_chars:
        return f"the prompt has {len(prompt)} characters, more than max_prompt_chars {limits.max_prompt_chars}"
    if len(input_token_ids) > limits.max_context_tokens:
        return f"{len(input_token_ids)} input_token_ids exceed the context of {limits.max_context_tokens}"
    if not prompt.strip() and not input_token_ids:
        return "empty request: give a prompt or input_token_ids"
    if not 1 <= options.max_new_tokens <= limits.max_new_tokens:
        return f"max_new_tokens must be in [1, {limits.max_new_tokens}], got {options.max_new_tokens}"
    bad = [t for t in input_token_ids if not 0 <= t < limits.vocab_size]
    if bad:
        return f"input_token_ids must be within the vocabulary size {limits.vocab_size}, got {bad[:5]}"
    if len(options.stop) > limits.max_stop_strings:
        return f"{len(options.stop)} stop strings, more than max_stop_strings {limits.max_stop_strings}"
    longest = max((len(s) for s in options.stop), default=0)
    if longest > limits.max_stop_chars:
        return f"a stop string of {longest} characters, more than max_stop_chars {limits.max_stop_chars}"
    return adapter_name_problem(options.adapter) or check_sampling(options.do_sample, options.temperature,
                                                                   options.top_p)


def prompt_ids(tokenizer, conversation: Conversation, prompt: str, input_token_ids: list[int],
               apply_chat_template: bool) -> tuple[list[int], list[dict[str, str]]]:
    """Every token id the session holds once the new input is in, and the chat including the new turn.

    With the chat template, the whole chat is rendered again: its tokens usually extend what the caches hold, and
    when they do not (a reply that tokenizes differently), the caller replays the whole chat. A model without one
    (a base model such as Gemma 3 270M) takes the prompt as plain text, as with ``apply_chat_template`` false.
    """
    if input_token_ids:
        return conversation.tokens + list(input_token_ids), conversation.messages
    if apply_chat_template and tokenizer.chat_template is not None:
        messages = [*conversation.messages, {"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids), messages
    return conversation.tokens + tokenizer(prompt, add_special_tokens=not conversation.tokens)["input_ids"], \
        conversation.messages


class TextStream:
    """Turns generated token ids into text deltas: holds back half characters and anything that may turn out to be
    the start of a stop string, and ends the text where a stop string appears.

    A token adds a few characters, so only the text from where the last search stopped, less the longest stop
    string, can hold a new match: each token costs the stop strings times that window, not times the whole text."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = sorted({s for s in stop if s}, key=len)
        self._reach = max((len(s) for s in self._stop), default=0)  # how far back a match may start
        self.ids: list[int] = []
        self.text = ""          # everything that is final (stop strings cut off)
        self._emitted = 0
        self._searched = 0      # the text before this holds no stop string (as far as it was final)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to show."""
        self.ids.append(token_id)
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        # Decoding again may change the last characters (a half character completed): search from before them.
        start = max(min(self._searched, len(text)) - self._reach, 0)
        cuts = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = text[:min(cuts)]
            return self._take(len(self.text))
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # a character split across tokens decodes as U+FFFD until complete
        self._searched = safe
        return self._take(max(safe - self._held(text[:safe]), self._emitted))

    def _held(self, text: str) -> int:
        """Characters at the end of ``text`` that may begin a stop string: the longest end of the text that is the
        start of one (only ends that begin with a stop string's first character are compared)."""
        held = 0
        for stop in self._stop:
            tail = text[len(text) - min(len(stop) - 1, len(text)):] if len(stop) > 1 else ""
            at = tail.find(stop[0])
            while at >= 0 and len(tail) - at > held:
                if stop.startswith(tail[at:]):
                    held = len(tail) - at
                    break
                at = tail.find(stop[0], at + 1)
        return held

    def flush(self) -> str:
        """The text still held back, at the end of generation."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        delta, self._emitted = self.text[self._emitted:end], max(end, self._emitted)
        return delta
