"""The demo with the fleet's fine-tuned adapter (``edge-lam demo --adapter``): the collaborative fine-tuning run as
the fleet runs it (an edge trainer and two robot trainers, their own processes over DDS, doc/training.md), its
adapter served by every shard, and questions held out of the fine-tuning asked with and without it.

No ROS here: the questions and requests, and the lines that show the answers side by side (the training's processes
are in :mod:`edge_lam.demo.graph`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_lam.chain.requests import Options, Request
from edge_lam.demo.graph import FLEET_ADAPTER
from edge_lam.training.domain_data import PROMPT, DomainSet, QAPair

__all__ = ["AdapterAnswer", "comparison_questions", "comparison_requests", "format_comparison"]

ANSWER_TOKENS = 24


def comparison_questions(domain: DomainSet, count: int = 4) -> list[QAPair]:
    """Held-out pairs, the manual's and the odometry's in turn: questions the fine-tuning never saw asked this way."""
    manual = [p for p in domain.heldout if p.start_s is None]
    odometry = [p for p in domain.heldout if p.start_s is not None]
    mixed = [p for pair in zip(manual, odometry, strict=False) for p in pair]
    return mixed[:count]


def comparison_requests(questions: list[QAPair]) -> list[tuple[Request, Request]]:
    """Per question, the request without an adapter and the one with the fleet's: the prompt as the fine-tuning
    wrote its examples (no chat template), one line of answer."""
    options = Options(max_new_tokens=ANSWER_TOKENS, apply_chat_template=False, stop=("\n",))
    return [tuple(Request(f"adapter-{index}-{adapter or 'base'}", prompt=PROMPT.format(question=pair.question),
                          options=replace(options, adapter=adapter))
                  for adapter in ("", FLEET_ADAPTER)) for index, pair in enumerate(questions)]


@dataclass(frozen=True)
class AdapterAnswer:
    """A held-out question, the answer the domain set holds, and the chain's answers without and with the adapter
    (or the error it gave)."""

    question: str
    expected: str
    base: str
    adapted: str

    def as_dict(self) -> dict[str, str]:
        return {"question": self.question, "expected": self.expected, "base": self.base, "adapted": self.adapted}


def format_comparison(answers: list[AdapterAnswer]) -> str:
    lines = [f"the fleet's fine-tuned adapter ('{FLEET_ADAPTER}') against the base model, on questions held out of "
             "the fine-tuning:"]
    for answer in answers:
        lines += [f"  Q: {answer.question}", f"     expected: {answer.expected}",
                  f"     base:     {answer.base.strip()}", f"     adapter:  {answer.adapted.strip()}"]
    return "\n".join(lines)
