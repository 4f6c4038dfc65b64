"""Semantic tokens of any modality turned into words a language model reads in its prompt.

This is the first bridge from the encoders to the LAM: each modality's newest tokens become one line of text
through its published vocabulary, and the lines become a prompt. Scored tokens (classes) keep their probability;
a grid of patch tokens is summarised by its most frequent words; a scan keeps each sector's word.
"""

from __future__ import annotations

import collections
import dataclasses

from edge_lam.encoders.tokens import Encoded, Vocabulary

DEFAULT_INSTRUCTION = (
    "You are the voice of a mobile robot. From the sensor readings below, say in one or two short sentences "
    "what the robot sees and what it is doing."
)


@dataclasses.dataclass(frozen=True)
class Observation:
    """The newest tokens of one sensor, with the vocabulary that gives them words."""

    modality: str
    sensor: str
    encoded: Encoded
    vocabulary: Vocabulary


def describe(observation: Observation, max_words: int = 5) -> str:
    """One line of words for one sensor's tokens."""
    encoded, vocabulary = observation.encoded, observation.vocabulary
    words = vocabulary.describe(encoded.ids)
    if observation.modality == "text":
        return "".join(words).strip()
    if len(encoded.shape) == 2:  # a grid of patch tokens: the share of its most frequent words
        counts = collections.Counter(words).most_common(max_words)
        return ", ".join(f"{word} {100 * n / len(words):.0f}%" for word, n in counts)
    if encoded.scores is not None and observation.modality != "scan":
        return ", ".join(f"{w} ({100 * s:.0f}%)" for w, s in list(zip(words, encoded.scores, strict=True))[:max_words])
    deduplicated = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    return ", ".join(deduplicated)


def observations_text(observations: list[Observation]) -> str:
    """One ``- modality (sensor): words`` line per observation, in a stable order."""
    ordered = sorted(observations, key=lambda o: (o.modality, o.sensor))
    return "\n".join(f"- {o.modality} ({o.sensor}): {describe(o)}" for o in ordered)


def report_prompt(observations: list[Observation], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The prompt that asks the model for a short report of what the sensors say."""
    if not observations:
        raise ValueError("no observations to report on")
    return f"{instruction}\n\nSensor readings:\n{observations_text(observations)}"
