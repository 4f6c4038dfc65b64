"""Bytes on the robot's link per report, per sensor stream and transport, counted from real serialized messages.

Replays the bundled bags on their own timeline (the camera bag's 640x480 JPEG frames at 10 Hz, looped as the demo
loops it; the odometry of evo's Nav2 TurtleBot run), runs the real encoder cores on every message (EfficientNet-Lite0
in onnxruntime at 1 thread, the odometry motion encoder; their CPU time per message), serializes every message that
would cross the link with rclpy (CDR, as DDS sends it) and adds them up per report period:

- tokens (the baseline: today's fixed choice): the robot encodes, the report's prompt carries the stream's line;
- raw: every sensor message to an encoder on the edge (JPEG as the bag holds it; rgb8 as a camera driver's
  ``image_raw``), plus the edge encoder's token messages back to the reporter on the robot;
- embeddings: the newest SemanticTokens with its embedding in float16 (a frame's 1280-d one, a motion window's
  speed and yaw rate), one per report (counted, not served: the chain's prompt takes no projector input yet).

It also prints the chooser's pick (``edge_lam.fleet.transport``) for a few links and robot speeds, and the stream
profiles it measured (what ``DEFAULT_PROFILES`` holds). No scan row: no bundled bag holds a LaserScan.

    python bench/transport.py [--reports 12] [--period 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import time

LINKS = [(100e6, 0.020), (5e6, 0.050), (1e6, 0.100)]  # bandwidth bit/s, one-way latency s
ROBOT_SCALES = [0.25, 1.0]
ROBOT_ID = "tb3"
WARMUP = 5  # frames encoded before timing (onnxruntime's first runs allocate)
TIMINGS = 3  # times each frame is decoded and encoded


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def bag_messages(bag: pathlib.Path, topic: str, msg_type) -> list[tuple[float, object, int]]:
    """(seconds from the bag's start, the message as rclpy deserialises it, its serialized size) per message."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [((stamp - reader.start_time) / 1e9, deserialize_message(raw, msg_type), len(raw))
                for _, stamp, raw in reader.messages(connections=connections)]


@dataclasses.dataclass
class Event:
    """One sensor message of a stream: when, its size (per raw form), and the token message it made, if any."""

    t_s: float
    raw_bytes: dict[str, int]
    tokens: object | None = None  # SemanticTokens without the embedding
    embedding_bytes: int = 0  # the same message with the embedding in float16


def size(msg) -> int:
    from rclpy.serialization import serialize_message

    return len(serialize_message(msg))


def camera_events() -> tuple[list[Event], float, object]:
    """The camera bag's frames through EfficientNet-Lite0 (1 thread); the median decode + encode time."""
    import cv2
    from sensor_msgs.msg import CompressedImage, Image

    from edge_lam.assets.cache import camera_bag_dir
    from edge_lam.encoders.classifier import EfficientNetClassifier
    from edge_lam.encoders.image import compressed_to_rgb
    from edge_lam.wire.tokens import to_semantic_tokens

    core = EfficientNetClassifier(threads=1, top_k=3)
    cv2.setNumThreads(1)
    messages = bag_messages(camera_bag_dir() / "bag.mcap", "/camera/image_raw/compressed", CompressedImage)
    for _, msg, _ in messages[:WARMUP]:
        core.encode(compressed_to_rgb(msg.format, msg.data))
    events, seconds = [], []
    for i, (t_s, msg, jpeg_bytes) in enumerate(messages):
        for _ in range(TIMINGS):  # each frame timed a few times, in CPU time: waits for a core another
            started = time.process_time()  # process holds on this shared machine are not the encoder's cost
            rgb = compressed_to_rgb(msg.format, msg.data)
            encoded = core.encode(rgb)
            seconds.append(time.process_time() - started)
        image = Image(header=msg.header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                      step=rgb.shape[1] * 3, data=rgb.tobytes())
        common = dict(robot_id=ROBOT_ID, sensor="camera", modality="image", vocabulary=core.vocabulary, seq=i,
                      header=msg.header, encode_seconds=seconds[-1])
        with_embedding = to_semantic_tokens(encoded, embedding_dtype="float16", **common)
        encoded.embedding = None
        tokens = to_semantic_tokens(encoded, **common)
        events.append(Event(t_s, {"jpeg": jpeg_bytes, "rgb8": size(image)}, tokens, size(with_embedding)))
    return events, statistics.median(seconds), core.vocabulary


def odometry_events() -> tuple[list[Event], float, object]:
    """The Nav2 bag's odometry through the motion encoder (1 s windows); the median time per message."""
    from nav_msgs.msg import Odometry

    from edge_lam.assets.cache import evo_bags_dir
    from edge_lam.encoders.motion import OdometryMotionEncoder
    from edge_lam.wire.sensors import odometry_sample
    from edge_lam.wire.tokens import to_semantic_tokens

    core = OdometryMotionEncoder()
    events, seconds, published = [], [], 0
    for t_s, msg, odom_bytes in bag_messages(evo_bags_dir() / "nav2_turtlebot.mcap", "/odom", Odometry):
        started = time.perf_counter()
        encoded = core.add(odometry_sample(msg))
        seconds.append(time.perf_counter() - started)
        tokens, embedding_bytes = None, 0
        if encoded is not None:
            common = dict(robot_id=ROBOT_ID, sensor="odom", modality="odometry", vocabulary=core.vocabulary,
                          seq=published, header=msg.header, encode_seconds=seconds[-1])
            embedding_bytes = size(to_semantic_tokens(encoded, embedding_dtype="float16", **common))
            encoded.embedding = None
            tokens = to_semantic_tokens(encoded, **common)
            published += 1
        events.append(Event(t_s, {"odometry": odom_bytes}, tokens, embedding_bytes))
    return events, statistics.median(seconds), core.vocabulary


def looped(events: list[Event], until_s: float) -> list[Event]:
    """The events replayed in a loop (as ``edge-lam replay --loop``) up to ``until_s``."""
    span = events[-1].t_s + (events[-1].t_s - events[0].t_s) / max(1, len(events) - 1)
    out, start = [], 0.0
    while start < until_s:
        out += [dataclasses.replace(e, t_s=start + e.t_s) for e in events if start + e.t_s < until_s]
        start += span
    return out


def line_bytes(modality: str, tokens, vocabulary) -> int:
    """The stream's line in the report's prompt (and its newline), as the reporter writes it."""
    from edge_lam.reporting.verbalize import Observation, observations_text
    from edge_lam.wire.tokens import from_semantic_tokens

    observation = Observation(modality, tokens.sensor, from_semantic_tokens(tokens), vocabulary)
    return len(observations_text([observation]).encode()) + 1


def per_report(events: list[Event], modality: str, vocabulary, period_s: float, reports: int) -> dict:
    """Bytes crossing the link in each report period, per choice (reporter on the robot, as deployed)."""
    timeline = looped(events, period_s * reports)
    counts: dict[str, list[float]] = {}
    newest = None
    for k in range(reports):
        window = [e for e in timeline if k * period_s <= e.t_s < (k + 1) * period_s]
        made = [e for e in window if e.tokens is not None]
        newest = made[-1] if made else newest
        if newest is None:
            continue
        line = line_bytes(modality, newest.tokens, vocabulary)
        back = sum(size(e.tokens) for e in made)
        counts.setdefault("tokens", []).append(line)
        for form in window[0].raw_bytes:
            counts.setdefault(f"raw {form}", []).append(sum(e.raw_bytes[form] for e in window) + back + line)
        if newest.embedding_bytes:
            counts.setdefault("embeddings", []).append(newest.embedding_bytes)
    return counts


def profile(stream: str, events: list[Event], encode_s: float, vocabulary, raw_form: str):
    """The stream's measured figures as the chooser takes them."""
    from edge_lam.fleet.transport import StreamProfile

    duration_s = events[-1].t_s - events[0].t_s
    made = [e for e in events if e.tokens is not None]
    embeddings = [e.embedding_bytes for e in made if e.embedding_bytes]
    return StreamProfile(
        stream=stream, raw_hz=round((len(events) - 1) / duration_s, 2),
        raw_bytes=round(statistics.mean(e.raw_bytes[raw_form] for e in events)),
        tokens_hz=round((len(made) - 1) / duration_s, 2) if len(made) > 1 else 1.0,
        tokens_bytes=round(statistics.mean(size(e.tokens) for e in made)),
        line_bytes=round(statistics.mean(line_bytes(stream, e.tokens, vocabulary) for e in made)),
        encode_s=round(encode_s, 5),
        embedding_bytes=round(statistics.mean(embeddings)) if embeddings else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=12, help="report periods counted (default 12)")
    parser.add_argument("--period", type=float, default=5.0, help="seconds between reports (default 5, as deployed)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args()

    from edge_lam.descriptors import Link
    from edge_lam.fleet.transport import choose

    streams = {"image": (*camera_events(), "jpeg"), "odometry": (*odometry_events(), "odometry")}
    table, profiles = {}, {}
    for stream, (events, encode_s, vocabulary, raw_form) in streams.items():
        counts = per_report(events, stream, vocabulary, args.period, args.reports)
        baseline = statistics.median(counts["tokens"])
        table[stream] = {choice: {"median": statistics.median(v), "p99": p99(v),
                                  "vs_baseline": statistics.median(v) / baseline, "reports": len(v)}
                         for choice, v in counts.items()}
        profiles[stream] = profile(stream, events, encode_s, vocabulary, raw_form)

    print(f"bytes on the robot's link per report ({args.period:g} s), {args.reports} reports; baseline: tokens "
          "(the robot encodes, the prompt carries words)")
    print(f"{'stream':<9} | {'transport':<13} | {'median B':>11} | {'p99 B':>11} | {'Mbit/s':>7} | {'vs baseline':>11}")
    for stream, rows in table.items():
        for choice, row in rows.items():
            print(f"{stream:<9} | {choice:<13} | {row['median']:11.0f} | {row['p99']:11.0f} | "
                  f"{8 * row['median'] / args.period / 1e6:7.3f} | {row['vs_baseline']:10.1f}x")
    print("\nprofiles (what edge_lam.fleet.transport.DEFAULT_PROFILES holds):")
    for p in profiles.values():
        print(f"    {p}")

    picks = []
    print(f"\n{'link':<16} | {'robot':>5} | {'reporter':<8} | {'image':<7} | {'odometry':<8} | why (image)")
    for bandwidth_bps, latency_s in LINKS:
        link = Link("robot", "edge", latency_s, bandwidth_bps)
        for scale in ROBOT_SCALES:
            for on_robot in (True, False):
                decisions = {s: choose(p, link, period_s=args.period, robot_scale=scale, reporter_on_robot=on_robot)
                             for s, p in profiles.items()}
                name = f"{bandwidth_bps / 1e6:g} Mbit/{latency_s * 1e3:g} ms"
                reporter = "robot" if on_robot else "edge"
                print(f"{name:<16} | {scale:4g}x | {reporter:<8} | {decisions['image'].choice:<7} | "
                      f"{decisions['odometry'].choice:<8} | {decisions['image'].reason}")
                picks.append({"bandwidth_bps": bandwidth_bps, "latency_s": latency_s, "robot_scale": scale,
                              "reporter": reporter, **{s: d.choice for s, d in decisions.items()},
                              "why": {s: d.reason for s, d in decisions.items()}})
    if args.json:
        args.json.write_text(json.dumps({
            "period_s": args.period, "reports": args.reports, "bytes_per_report": table,
            "profiles": {s: dataclasses.asdict(p) for s, p in profiles.items()}, "picks": picks,
            "image_raw_jpeg_vs_tokens": table["image"]["raw jpeg"]["vs_baseline"],
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
