"""Task-oriented transport: what of a sensor stream crosses the robot's link, chosen per stream, not fixed.

A stream can reach the LAM (on the edge) three ways:

- ``tokens``: the robot encodes every message; the report's prompt carries the stream's line of words (today's way);
- ``raw``: every sensor message crosses to an encoder on the edge, which spends no robot compute; its tokens come
  back to the reporter when the reporter runs on the robot (two more crossings per observation);
- ``embeddings``: the robot encodes; the newest embedding rides with the report to a projector on the edge. The
  chain's prompt cannot take projector inputs yet, so this one is counted but not served (``SERVED``).

The choice is the served candidate that gets an observation to the LAM soonest (robot encode, crossings of the
link at its latency and bandwidth, edge encode) among those whose traffic fits ``max_link_share`` of the link's
bandwidth (the rest is the model's hidden states and the control plane's); ties go to fewer bytes. Costs come from
measured figures (``StreamProfile``, made by ``bench/transport.py`` from the real bags) and the adverts' link and
compute figures. Pure: no ROS, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from edge_lam.descriptors import Advert, Link

__all__ = [
    "CHOICES",
    "DEFAULT_PROFILES",
    "SERVED",
    "TRANSPORTS",
    "Candidate",
    "Decision",
    "StreamProfile",
    "candidates",
    "choose",
    "choose_from_adverts",
    "parse_transports",
]

CHOICES = ("raw", "tokens", "embeddings")
TRANSPORTS = ("auto", *CHOICES)
SERVED = frozenset({"raw", "tokens"})  # embeddings: no projector input into the chain's prompt yet
TIE_S = 1e-4  # latencies closer than this are equal: the smaller traffic wins


@dataclass(frozen=True)
class StreamProfile:
    """One sensor stream as measured: message rates, serialized sizes of what each choice sends, encode time.

    Sizes are whole serialized messages (CDR, as DDS sends them; headers of the transport not counted);
    ``encode_s`` is the encoder on one message on the host the figures were measured on (the edge's compute);
    ``embedding_bytes`` is None when the stream's encoder makes no embedding.
    """

    stream: str
    raw_hz: float  # sensor messages per second
    raw_bytes: float  # one sensor message
    tokens_hz: float  # token messages per second (a motion encoder makes one per window)
    tokens_bytes: float  # one SemanticTokens message without the embedding
    line_bytes: float  # the stream's line in a report's prompt
    encode_s: float
    embedding_bytes: float | None = None  # one SemanticTokens message with its embedding in float16

    def __post_init__(self) -> None:
        figures = (self.raw_hz, self.raw_bytes, self.tokens_hz, self.tokens_bytes, self.line_bytes, self.encode_s)
        if not all(math.isfinite(f) and f >= 0 for f in figures) or self.raw_hz <= 0:
            raise ValueError(f"stream '{self.stream}': rates, sizes and encode time must be finite and >= 0 "
                             f"(and the sensor rate > 0), got {figures}")


@dataclass(frozen=True)
class Candidate:
    """One way for a stream, priced on one link: bytes crossing it per report (both ways), the bytes of each crossing
    on an observation's way to the LAM, and the encode time on the robot and on the edge (at their compute)."""

    choice: str
    bytes_per_report: float
    crossings: tuple[float, ...]
    robot_encode_s: float
    edge_encode_s: float

    @property
    def served(self) -> bool:
        return self.choice in SERVED

    def latency_s(self, link: Link) -> float:
        """From the sensor message to its content at the LAM's host."""
        return self.robot_encode_s + sum(link.transfer_s(b) for b in self.crossings) + self.edge_encode_s

    def link_share(self, link: Link, period_s: float) -> float:
        """The share of the link's bandwidth the stream takes."""
        return 8 * self.bytes_per_report / period_s / link.bandwidth_bps


@dataclass(frozen=True)
class Decision:
    """The choice for one stream, why, and every candidate's price (latency s, link share) to show the user."""

    stream: str
    choice: str
    reason: str
    latency_s: Mapping[str, float]
    link_share: Mapping[str, float]
    bytes_per_report: Mapping[str, float]

    @property
    def served(self) -> bool:
        return self.choice in SERVED


def candidates(profile: StreamProfile, period_s: float, robot_scale: float, edge_scale: float = 1.0,
               reporter_on_robot: bool = True) -> dict[str, Candidate]:
    """Each choice the stream has, priced for reports every ``period_s`` and hosts at ``robot_scale`` and
    ``edge_scale`` times the compute the profile was measured at."""
    if period_s <= 0 or robot_scale <= 0 or edge_scale <= 0:
        raise ValueError(f"period and compute scales must be > 0, got {period_s}, {robot_scale}, {edge_scale}")
    p = profile
    robot_s, edge_s = p.encode_s / robot_scale, p.encode_s / edge_scale
    raw_messages = p.raw_hz * period_s
    if reporter_on_robot:  # tokens made on the edge come back to the reporter, whose prompt goes out again
        raw = Candidate("raw", raw_messages * p.raw_bytes + p.tokens_hz * period_s * p.tokens_bytes + p.line_bytes,
                        (p.raw_bytes, p.tokens_bytes, p.line_bytes), 0.0, edge_s)
        tokens = Candidate("tokens", p.line_bytes, (p.line_bytes,), robot_s, 0.0)
    else:  # the reporter beside the LAM reads token messages as they come
        raw = Candidate("raw", raw_messages * p.raw_bytes, (p.raw_bytes,), 0.0, edge_s)
        tokens = Candidate("tokens", p.tokens_hz * period_s * p.tokens_bytes, (p.tokens_bytes,), robot_s, 0.0)
    found = {"raw": raw, "tokens": tokens}
    if p.embedding_bytes is not None:  # one per report, the newest, with the request
        found["embeddings"] = Candidate("embeddings", p.embedding_bytes, (p.embedding_bytes,), robot_s, 0.0)
    return found


def choose(profile: StreamProfile, link: Link, *, period_s: float, robot_scale: float, edge_scale: float = 1.0,
           reporter_on_robot: bool = True, max_link_share: float = 0.5, transport: str = "auto") -> Decision:
    """The transport of one stream: ``transport`` itself unless it is ``auto``; for ``auto`` the served candidate
    that reaches the LAM soonest within ``max_link_share`` of the bandwidth, else the one that takes the least."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport of '{profile.stream}' must be one of {', '.join(TRANSPORTS)}, not '{transport}'")
    if not 0 < max_link_share <= 1:
        raise ValueError(f"max_link_share must be in (0, 1], got {max_link_share}")
    priced = candidates(profile, period_s, robot_scale, edge_scale, reporter_on_robot)
    latency = {c: cand.latency_s(link) for c, cand in priced.items()}
    share = {c: cand.link_share(link, period_s) for c, cand in priced.items()}
    size = {c: cand.bytes_per_report for c, cand in priced.items()}

    def decided(choice: str, reason: str) -> Decision:
        return Decision(profile.stream, choice, reason, latency, share, size)

    def figures(c: str) -> str:
        return f"{c} {latency[c] * 1e3:.1f} ms, {share[c]:.1%} of the link"

    if transport != "auto":
        if transport not in priced:
            raise ValueError(f"stream '{profile.stream}' has no {transport} (its encoder makes none)")
        return decided(transport, f"set by the parameter ({figures(transport)})")
    served = [c for c in priced if priced[c].served]
    fitting = [c for c in served if share[c] <= max_link_share]
    if not fitting:
        least = min(served, key=lambda c: (share[c], latency[c]))
        return decided(least, f"nothing fits {max_link_share:.0%} of {link.bandwidth_bps / 1e6:g} Mbit/s; "
                              f"{least} takes the least ({figures(least)})")
    best = min(fitting, key=lambda c: (round(latency[c] / TIE_S), size[c]))
    others = [c for c in served if c != best]
    beaten = "; ".join(figures(c) + ("" if c in fitting else ", over capacity") for c in others)
    return decided(best, f"{figures(best)}" + (f"; {beaten}" if beaten else ""))


def choose_from_adverts(profile: StreamProfile, robot: Advert, edge: Advert, *, period_s: float,
                        reporter_on_robot: bool = True, max_link_share: float = 0.5,
                        transport: str = "auto") -> Decision:
    """``choose`` with the robot's advertised link to the edge and the two hosts' compute: the profile's encode
    time is taken as the edge's, the robot's scaled by the ratio of their effective GFLOP/s. Without a link
    figure yet, ``auto`` keeps tokens (the robot's own encoder needs no link to work)."""
    link = next((k for k in robot.links if k.dst == edge.host_id), None)
    if link is None:
        link = next((Link(robot.host_id, edge.host_id, k.latency_s, k.bandwidth_bps)
                     for k in edge.links if k.dst == robot.host_id), None)
    if link is None:
        if transport != "auto":
            return Decision(profile.stream, transport, "set by the parameter (no link figure yet)", {}, {}, {})
        return Decision(profile.stream, "tokens", f"no advertised link {robot.host_id} -> {edge.host_id} yet: "
                        "tokens need none", {}, {}, {})
    if edge.effective_gflops <= 0 or robot.effective_gflops <= 0:
        raise ValueError(f"adverts of {robot.host_id} and {edge.host_id} need compute > 0 to price encoding")
    return choose(profile, link, period_s=period_s, robot_scale=robot.effective_gflops / edge.effective_gflops,
                  reporter_on_robot=reporter_on_robot, max_link_share=max_link_share, transport=transport)


def parse_transports(items: list[str], streams: list[str]) -> dict[str, str]:
    """``STREAM=CHOICE`` items (e.g. ``image=raw``) as a mapping; every other stream of ``streams`` gets tokens."""
    chosen = dict.fromkeys(streams, "tokens")
    for item in items:
        stream, sep, choice = item.partition("=")
        if not sep or choice not in TRANSPORTS:
            raise ValueError(f"transport '{item}': expected STREAM=CHOICE with CHOICE one of {', '.join(TRANSPORTS)}")
        if stream not in chosen:
            raise ValueError(f"transport '{item}': no stream '{stream}' (streams: {', '.join(streams)})")
        chosen[stream] = choice
    return chosen


# Measured by bench/transport.py (2026-11-30, 2 cores) on the bundled bags: the camera bag's 640x480 JPEG frames at
# 10 Hz through EfficientNet-Lite0 at 1 thread (JPEG decode + encode, median CPU time, on a machine shared with
# other work: bench/encoders.py measured the classifier alone at 6.8 ms on a quiet one), evo's Nav2 TurtleBot
# odometry through the 0.5 s motion windows. Rerun the bench for other sensors or encoders.
DEFAULT_PROFILES: dict[str, StreamProfile] = {
    "image": StreamProfile("image", raw_hz=10.0, raw_bytes=48623, tokens_hz=10.0, tokens_bytes=172, line_bytes=66,
                           encode_s=0.01361, embedding_bytes=2756),
    "odometry": StreamProfile("odometry", raw_hz=27.1, raw_bytes=724, tokens_hz=1.93, tokens_bytes=252,
                              line_bytes=38, encode_s=1e-05, embedding_bytes=276),
}
