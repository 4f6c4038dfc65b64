"""The byte ledger of a collaborative training run: every message, who sent it to whom, what it was, its size.

Sizes are what the message takes serialized (see :func:`edge_lam.training.compression.wire_bytes`); the ledger
only adds them up, so one run's JSON file says where every byte went and the summary totals them per round, per
kind and per direction.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from dataclasses import asdict, dataclass

__all__ = ["DIRECTIONS", "ByteLedger", "Message"]

DIRECTIONS = ("up", "down")  # up: robot to edge; down: edge to robot


@dataclass(frozen=True)
class Message:
    """One message on the wire: its round, direction, sender and receiver, kind (``activation``, ``gradient``,
    ``adapter``, ``model`` ...) and serialized size in bytes."""

    round: int
    direction: str
    sender: str
    receiver: str
    kind: str
    bytes: int


class ByteLedger:
    """Messages in the order they were sent, and their totals."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def record(self, round: int, direction: str, sender: str, receiver: str, kind: str, nbytes: int) -> Message:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        if nbytes < 0 or round < 0:
            raise ValueError(f"round and bytes must not be negative, got round {round}, {nbytes} bytes")
        message = Message(round, direction, sender, receiver, kind, int(nbytes))
        self.messages.append(message)
        return message

    def total(self) -> int:
        return sum(m.bytes for m in self.messages)

    def per_round(self) -> dict[int, int]:
        return dict(sorted(self._totals(lambda m: m.round).items()))

    def per_kind(self) -> dict[str, int]:
        return dict(sorted(self._totals(lambda m: m.kind).items()))

    def per_direction(self) -> dict[str, int]:
        totals = self._totals(lambda m: m.direction)
        return {direction: totals.get(direction, 0) for direction in DIRECTIONS}

    def _totals(self, key) -> Counter:
        totals: Counter = Counter()
        for message in self.messages:
            totals[key(message)] += message.bytes
        return totals

    def summary(self) -> dict:
        """Totals: all bytes, per round, per kind, per direction, and the number of messages."""
        return {"total_bytes": self.total(), "messages": len(self.messages), "per_round": self.per_round(),
                "per_kind": self.per_kind(), "per_direction": self.per_direction()}

    def write_json(self, path: pathlib.Path, **run: object) -> None:
        """One run's file: what the run was (``run``, free-form), the summary and every message."""
        document = {"run": run, "summary": self.summary(), "messages": [asdict(m) for m in self.messages]}
        pathlib.Path(path).write_text(json.dumps(document, indent=1))
