"""The gateway's text parts: checking requests, building prompt tokens, and streaming text with stop strings.

No ROS here: the gateway core (``edge_lam.chain.gateway``) calls these with its requests' values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Conversation", "Limits", "TextStream", "check_request", "prompt_ids"]


@dataclass(frozen=True)
class Limits:
    """What the gateway accepts."""

    vocab_size: int
    max_new_tokens: int = 1024
    max_context_tokens: int = 2048


@dataclass
class Conversation:
    """A session as the gateway sees it: the chat so far and the token ids its KV caches hold."""

    messages: list[dict[str, str]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def check_request(prompt: str, input_token_ids: list[int], max_new_tokens: int, do_sample: bool,
                  temperature: float, top_p: float, limits: Limits) -> str | None:
    """Why the request cannot be served, or None when it can."""
    if not prompt.strip() and not input_token_ids:
        return "empty request: give a prompt or input_token_ids"
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        return f"max_new_tokens must be in [1, {limits.max_new_tokens}], got {max_new_tokens}"
    bad = [t for t in input_token_ids if t >= limits.vocab_size]
    if bad:
        return f"input_token_ids must be below the vocabulary size {limits.vocab_size}, got {bad[:5]}"
    if do_sample and not temperature > 0:
        return f"temperature must be > 0 when sampling, got {temperature}"
    if do_sample and not 0 < top_p <= 1:
        return f"top_p must be in (0, 1], got {top_p}"
    return None


def prompt_ids(tokenizer, conversation: Conversation, prompt: str, input_token_ids: list[int],
               apply_chat_template: bool) -> tuple[list[int], list[dict[str, str]]]:
    """Every token id the session holds once the new input is in, and the chat including the new turn.

    With the chat template, the whole chat is rendered again: its tokens usually extend what the caches hold, and
    when they do not (a reply that tokenizes differently), the caller replays the whole chat.
    """
    if input_token_ids:
        return conversation.tokens + list(input_token_ids), conversation.messages
    if apply_chat_template:
        messages = [*conversation.messages, {"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids), messages
    return conversation.tokens + tokenizer(prompt, add_special_tokens=not conversation.tokens)["input_ids"], \
        conversation.messages


class TextStream:
    """Turns generated token ids into text deltas: holds back half characters and anything that may turn out to be
    the start of a stop string, and ends the text where a stop string appears."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""          # everything that is final (stop strings cut off)
        self._emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to show."""
        self.ids.append(token_id)
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = text[:min(cuts)]
            return self._take(len(self.text))
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # a character split across tokens decodes as U+FFFD until complete
        held = max((n for stop in self._stop for n in range(1, min(len(stop), safe + 1))
                    if text[:safe].endswith(stop[:n])), default=0)
        return self._take(max(safe - held, self._emitted))

    def flush(self) -> str:
        """The text still held back, at the end of generation."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        delta, self._emitted = self.text[self._emitted:end], max(end, self._emitted)
        return delta
