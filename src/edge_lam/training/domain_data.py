"""A small domain set of question/answer pairs built from a real robot's odometry and the demo robot's manual.

Odometry pairs come from a bag's ``nav_msgs/Odometry``: the run is cut into windows by the motion encoder
(:class:`~edge_lam.encoders.motion.OdometryMotionEncoder`, so the answers speak its words), and each window gives
two pairs: what the robot was doing at that time of the run (recall of the fleet's own log), and what a given
mean speed and yaw rate mean (the encoder's rule, which carries over to windows never seen). Manual pairs come from
the "Quick answers" table of ``data/maintenance_manual.md``: each row is asked one way for training and the other
way held out, so the held-out set asks for the manual's facts in words the model was not trained on.

The held-out split is fixed, not sampled: every ``heldout_every``-th window (both its pairs) and every manual
rephrasing. For federated runs each robot gets its own part of the run's time range, and every n-th manual row.
"""

from __future__ import annotations

import itertools
import pathlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from rosbags.highlevel import AnyReader

from edge_lam.encoders.motion import MotionBins, OdometryMotionEncoder, OdometrySample
from edge_lam.training.split import IGNORE
from edge_lam.wire.sensors import odometry_sample

__all__ = [
    "MANUAL",
    "PROMPT",
    "Batch",
    "DomainSet",
    "QAPair",
    "batch_stream",
    "build_domain_set",
    "make_batch",
    "manual_pairs",
    "motion_phrase",
    "odometry_pairs",
    "read_odometry",
]

MANUAL = pathlib.Path(__file__).with_name("data") / "maintenance_manual.md"
PROMPT = "Question: {question}\nAnswer:"  # short: no chat template, whose system prompt would triple the tokens
_MANUAL_TABLE = "## Quick answers"
_ADVERBS = {"slow": "slowly"}  # bucket names that need a different word after a verb


@dataclass(frozen=True)
class QAPair:
    """One question and its answer; ``start_s`` is the odometry window's start in the run (None for the manual)."""

    question: str
    answer: str
    source: str
    start_s: float | None = None


@dataclass(frozen=True)
class DomainSet:
    """The training and held-out pairs, and the length of the run the odometry pairs come from."""

    train: tuple[QAPair, ...]
    heldout: tuple[QAPair, ...]
    duration_s: float

    def robot_shares(self, robots: int) -> list[list[QAPair]]:
        """Each robot's local training pairs: its own slice of the run's time range, and every n-th manual pair."""
        if robots < 1:
            raise ValueError(f"need at least one robot, got {robots}")
        shares: list[list[QAPair]] = [[] for _ in range(robots)]
        manual = itertools.count()
        for pair in self.train:
            if pair.start_s is None:
                shares[next(manual) % robots].append(pair)
            else:
                shares[min(robots - 1, int(pair.start_s / self.duration_s * robots))].append(pair)
        return shares


def read_odometry(bag: pathlib.Path, topic: str = "/odom") -> list[OdometrySample]:
    """Every odometry message of ``topic`` in ``bag`` (rosbag2 MCAP or sqlite3) as samples, in stamp order."""
    with AnyReader([pathlib.Path(bag)]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ValueError(f"{bag} has no topic {topic}")
        samples = [odometry_sample(reader.deserialize(raw, connection.msgtype))
                   for connection, _, raw in reader.messages(connections=connections)]
    return sorted(samples, key=lambda s: s.stamp)


def motion_phrase(words: str) -> str:
    """The motion encoder's ``"<linear> <turn>"`` words as a phrase, e.g. ``moving forward slowly while turning
    left fast``."""
    linear, turn = words.split()
    if linear == "still":
        moving = "standing still"
    else:
        direction, _, speed = linear.partition("-")
        moving = f"{'moving forward' if direction == 'forward' else 'reversing'} {_ADVERBS.get(speed, speed)}"
    if turn == "none":
        return moving if linear == "still" else f"{moving} in a straight line"
    side, _, rate = turn.partition("-")
    turning = f"turning {side} {_ADVERBS.get(rate, rate)}"
    return f"{turning} on the spot" if linear == "still" else f"{moving} while {turning}"


def odometry_pairs(samples: Sequence[OdometrySample], window_s: float = 2.0) -> list[QAPair]:
    """Two pairs per closed window of ``window_s`` (the last, unfinished window gives none); times are seconds
    since the first sample."""
    encoder = OdometryMotionEncoder(MotionBins(window_s=window_s))
    origin = samples[0].stamp if samples else 0.0
    pairs = []
    for sample in samples:
        encoded = encoder.add(sample)
        if encoded is None:
            continue
        start = encoder.last_window[0] - origin
        answer = motion_phrase(encoder.vocabulary.word(int(encoded.ids[0])))
        speed, yaw_rate = (float(v) for v in encoded.embedding[0])
        span = f"{start:.1f} s and {start + window_s:.1f} s"
        pairs.append(QAPair(f"What was the robot doing between {span} of the run?", answer, "odometry", start))
        pairs.append(QAPair(f"Between {span} the odometry averaged {speed:.2f} m/s forward and a yaw rate of "
                            f"{yaw_rate:+.2f} rad/s. What was the robot doing?", answer, "odometry", start))
    return pairs


def manual_pairs(text: str) -> list[tuple[QAPair, QAPair]]:
    """The manual's "Quick answers" rows as (question, rephrased question) pairs sharing one answer."""
    _, found, table = text.partition(_MANUAL_TABLE)
    if not found:
        raise ValueError(f"the manual has no '{_MANUAL_TABLE}' section")
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] == "Question" or set(cells[0]) <= {"-"}:
            continue
        question, rephrased, answer = cells
        rows.append((QAPair(question, answer, "manual"), QAPair(rephrased, answer, "manual")))
    if not rows:
        raise ValueError("the manual's quick-answers table has no rows")
    return rows


def build_domain_set(bag: pathlib.Path, manual: pathlib.Path = MANUAL, window_s: float = 2.0,
                     heldout_every: int = 5, topic: str = "/odom") -> DomainSet:
    """The domain set of one bag and the manual (deterministic: same inputs, same pairs in the same order)."""
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be at least 2, got {heldout_every}")
    samples = read_odometry(bag, topic)
    train, heldout = [], []
    pairs = odometry_pairs(samples, window_s)
    for window, (by_time, by_figures) in enumerate(zip(pairs[0::2], pairs[1::2], strict=True)):
        (heldout if window % heldout_every == heldout_every // 2 else train).extend((by_time, by_figures))
    for asked, rephrased in manual_pairs(pathlib.Path(manual).read_text()):
        train.append(asked)
        heldout.append(rephrased)
    duration = samples[-1].stamp - samples[0].stamp if samples else 0.0
    return DomainSet(tuple(train), tuple(heldout), duration)


@dataclass(frozen=True)
class Batch:
    """Token ids [B, L], right-padded, and the token each position must predict (IGNORE off the answers)."""

    input_ids: torch.Tensor
    targets: torch.Tensor

    @property
    def answer_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


def make_batch(pairs: Sequence[QAPair], tokenizer) -> Batch:
    """Tokenize ``pairs`` as ``PROMPT`` + `` answer`` + end token; the loss covers the answer and the end token."""
    rows = []
    for pair in pairs:
        prompt = tokenizer(PROMPT.format(question=pair.question), add_special_tokens=False)["input_ids"]
        answer = [*tokenizer(" " + pair.answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        rows.append((prompt, answer))
    length = max(len(p) + len(a) for p, a in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for row, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        input_ids[row, :len(ids)] = torch.tensor(ids)
        # Position t predicts token t + 1: the last prompt position predicts the first answer token.
        targets[row, len(prompt) - 1:len(ids) - 1] = torch.tensor(answer)
    return Batch(input_ids, targets)


def batch_stream(pairs: Sequence[QAPair], batch_size: int, seed: int) -> Iterator[list[QAPair]]:
    """Endless batches: each epoch a fresh permutation from ``seed``'s generator, the remainder carried over."""
    if not pairs or batch_size < 1:
        raise ValueError(f"need pairs and a positive batch size, got {len(pairs)} pairs, batch size {batch_size}")
    rng = random.Random(seed)
    pending: list[QAPair] = []
    while True:
        order = list(pairs)
        rng.shuffle(order)
        pending.extend(order)
        while len(pending) >= batch_size:
            yield pending[:batch_size]
            del pending[:batch_size]
