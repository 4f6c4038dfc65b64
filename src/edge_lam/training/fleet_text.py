"""Token sequences of the text a fleet's model actually reads and writes, for distilling early exits.

Two sources, each with a fixed held-out split:

- the reporter's prompts over real observations (camera frames of the prepared camera bag classified by
  EfficientNet-Lite0, odometry windows of evo's Nav2 TurtleBot run through the motion encoder), rendered with the
  chat template as the gateway renders them, followed by the whole model's own greedy answer: the exit learns the
  text it will be asked to continue, and the answers the whole model gives to it;
- the domain set (:mod:`edge_lam.training.domain_data`): odometry and manual questions with their answers.

Every ``heldout_every``-th report is held out; the domain set keeps its own held-out split.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch
from rosbags.highlevel import AnyReader

from edge_lam.encoders.motion import OdometryMotionEncoder
from edge_lam.reporting.verbalize import Observation, report_prompt
from edge_lam.training.domain_data import PROMPT, build_domain_set, read_odometry

__all__ = ["FleetText", "build_fleet_text", "report_observations"]

CAMERA_TOPIC = "/camera/image_raw/compressed"
ODOMETRY_BAG = "nav2_turtlebot.mcap"


@dataclass(frozen=True)
class FleetText:
    """Token id sequences to train on and to hold out, and a line saying what they are."""

    train: tuple[tuple[int, ...], ...]
    heldout: tuple[tuple[int, ...], ...]
    description: str


def _camera_frames(bag: pathlib.Path, topic: str = CAMERA_TOPIC) -> list:
    from edge_lam.encoders.image import compressed_to_rgb

    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ValueError(f"{bag} has no topic {topic}")
        return [compressed_to_rgb(msg.format, msg.data)
                for connection, _, raw in reader.messages(connections=connections)
                for msg in [reader.deserialize(raw, connection.msgtype)]]


def report_observations(camera_bag: pathlib.Path, odometry_bag: pathlib.Path, count: int) -> list[list[Observation]]:
    """``count`` observation sets as the reporter sees them: a camera frame's top classes beside an odometry
    window's motion word, frames and windows taken in step (spread over the whole recordings)."""
    from edge_lam.encoders.classifier import EfficientNetClassifier

    frames = _camera_frames(camera_bag)
    motion = OdometryMotionEncoder()
    windows = [e for e in (motion.add(s) for s in read_odometry(odometry_bag)) if e is not None]
    if not frames or not windows:
        raise ValueError(f"need camera frames and odometry windows, got {len(frames)} and {len(windows)}")
    classifier = EfficientNetClassifier(top_k=3)
    observations = []
    for index in range(count):
        frame = frames[index * len(frames) // count]
        window = windows[index * len(windows) // count]
        observations.append([
            Observation("image", "camera", classifier.encode(frame), classifier.vocabulary),
            Observation("odometry", "odom", window, motion.vocabulary),
        ])
    return observations


@torch.inference_mode()
def _greedy_answers(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int) -> list[list[int]]:
    """The whole model's greedy continuation of each prompt (left-padded batch), up to its end token."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad_id)
    eos = model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos])
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in ends), len(row))
        answers.append(row[:cut])
    return answers


def build_fleet_text(model, tokenizer, camera_bag: pathlib.Path, evo_bags: pathlib.Path, reports: int = 32,
                     answer_tokens: int = 32, heldout_every: int = 4) -> FleetText:
    """Report prompts with the whole model's greedy answers, and the domain set (deterministic)."""
    observations = report_observations(camera_bag, evo_bags / ODOMETRY_BAG, reports)
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": report_prompt(o)}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
               for o in observations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = _greedy_answers(model, prompts, answer_tokens, pad)
    report_sequences = [tuple(p + a) for p, a in zip(prompts, answers, strict=True)]
    held = [i % heldout_every == heldout_every // 2 for i in range(len(report_sequences))]

    domain = build_domain_set(evo_bags / ODOMETRY_BAG)

    def qa(pair) -> tuple[int, ...]:
        text = PROMPT.format(question=pair.question) + " " + pair.answer
        return (*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)

    train = [s for s, h in zip(report_sequences, held, strict=True) if not h] + [qa(p) for p in domain.train]
    heldout = [s for s, h in zip(report_sequences, held, strict=True) if h] + [qa(p) for p in domain.heldout]
    description = (f"{reports} reporter prompts (camera bag classes + nav2_turtlebot odometry, chat template) with "
                   f"the whole model's greedy answers (<= {answer_tokens} tokens), every {heldout_every}th held out; "
                   f"domain set {len(domain.train)} train / {len(domain.heldout)} held-out pairs")
    return FleetText(tuple(train), tuple(heldout), description)
