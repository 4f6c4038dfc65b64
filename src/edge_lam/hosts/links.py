"""What an emulated link does to the frames that cross it, as values: parsing, composing and storing them.

A host has one link to the emulated LAN, shaped per direction: ``up`` (host -> LAN) and ``down`` (LAN -> host).
Two hosts are joined by the sender's up and the receiver's down in series (``compose``). The forwarder reads the
links of a whole set from one JSON file, so they can change while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping

__all__ = ["HostLink", "LinkShape", "LinkSpecError", "compose", "format_link_spec", "links_from_json",
           "links_to_json", "parse_link_spec", "read_links", "write_links"]


class LinkSpecError(ValueError):
    """A link spec or a links file that says something impossible; the message names the offending part."""


@dataclasses.dataclass(frozen=True)
class LinkShape:
    """One direction of a link. ``rate_bps`` 0 means unlimited; ``loss`` is the share of frames dropped (0..1);
    ``jitter_ms`` spreads each frame's delay uniformly over latency +- jitter without reordering frames."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bps: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "rate_bps", "loss"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0 or value == float("inf"):
                raise LinkSpecError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.loss > 1:
            raise LinkSpecError(f"loss must be between 0 and 1, got {self.loss!r}")

    @property
    def is_perfect(self) -> bool:
        """True when frames pass untouched (the forwarder's fast path)."""
        return self == PERFECT


PERFECT = LinkShape()


@dataclasses.dataclass(frozen=True)
class HostLink:
    """A host's link to the LAN: both directions, and whether it is cut (everything dropped both ways)."""

    up: LinkShape = PERFECT
    down: LinkShape = PERFECT
    cut: bool = False


def compose(first: LinkShape, second: LinkShape) -> LinkShape:
    """Two links in series (a sender's up, then the receiver's down): delays add, the slower rate wins, a frame
    survives only if it survives both. Jitters add as a bound on the spread."""
    rates = [r for r in (first.rate_bps, second.rate_bps) if r > 0]
    return LinkShape(latency_ms=first.latency_ms + second.latency_ms,
                     jitter_ms=first.jitter_ms + second.jitter_ms,
                     rate_bps=min(rates) if rates else 0.0,
                     loss=1.0 - (1.0 - first.loss) * (1.0 - second.loss))


_DURATION_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "": 1.0}
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "": 1.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def _duration_ms(key: str, text: str) -> float:
    match = re.fullmatch(_NUMBER + r"(us|ms|s)?", text)
    if not match:
        raise LinkSpecError(f"{key} must be a duration like 50ms, 0.2s or 500us, got {text!r}")
    return float(match[1]) * _DURATION_UNITS[match[2] or ""]


def _rate_bps(text: str) -> float:
    if text in ("unlimited", "0"):
        return 0.0
    match = re.fullmatch(_NUMBER + r"(bit|kbit|mbit|gbit)?", text)
    if not match:
        raise LinkSpecError(f"rate must be bits per second like 20mbit, 512kbit or 1gbit (0 or unlimited: no "
                            f"limit), got {text!r}")
    return float(match[1]) * _RATE_UNITS[match[2] or ""]


def _loss(text: str) -> float:
    match = re.fullmatch(_NUMBER + r"(%?)", text)
    if not match:
        raise LinkSpecError(f"loss must be a share like 5% or 0.05, got {text!r}")
    value = float(match[1]) / (100.0 if match[2] else 1.0)
    if value > 1:
        raise LinkSpecError(f"loss must be at most 100% (1.0), got {text!r}")
    return value


def parse_link_spec(spec: str) -> LinkShape:
    """``latency=50ms,jitter=5ms,rate=20mbit,loss=5%`` as a LinkShape; a key left out is 0 (nothing), an empty spec
    is a perfect link. Units: us/ms/s (bare numbers are ms), bit/kbit/mbit/gbit per second (powers of 1000; bare
    numbers are bit/s), loss in % or as a share."""
    fields: dict[str, float] = {}
    for part in (p.strip() for p in spec.lower().split(",")):
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not value:
            raise LinkSpecError(f"link spec {spec!r}: {part!r} is not KEY=VALUE (keys: latency, jitter, rate, loss)")
        if key in fields:
            raise LinkSpecError(f"link spec {spec!r}: {key} given twice")
        if key in ("latency", "jitter"):
            fields[key] = _duration_ms(key, value)
        elif key == "rate":
            fields[key] = _rate_bps(value)
        elif key == "loss":
            fields[key] = _loss(value)
        else:
            raise LinkSpecError(f"link spec {spec!r}: unknown key {key!r} (keys: latency, jitter, rate, loss)")
    return LinkShape(latency_ms=fields.get("latency", 0.0), jitter_ms=fields.get("jitter", 0.0),
                     rate_bps=fields.get("rate", 0.0), loss=fields.get("loss", 0.0))


def format_link_spec(shape: LinkShape) -> str:
    """The spec ``parse_link_spec`` reads back as ``shape`` ("perfect" for a link that changes nothing)."""
    if shape.is_perfect:
        return "perfect"
    parts = []
    if shape.latency_ms:
        parts.append(f"latency={shape.latency_ms:g}ms")
    if shape.jitter_ms:
        parts.append(f"jitter={shape.jitter_ms:g}ms")
    if shape.rate_bps:
        parts.append(f"rate={shape.rate_bps / 1e3:g}kbit")
    if shape.loss:
        parts.append(f"loss={shape.loss * 100:g}%")
    return ",".join(parts)


def links_to_json(links: Mapping[str, HostLink]) -> str:
    return json.dumps({host: dataclasses.asdict(link) for host, link in links.items()}, indent=1, sort_keys=True)


def links_from_json(text: str) -> dict[str, HostLink]:
    """The links a file holds; LinkSpecError on anything that is not a host -> {up, down, cut} map of valid links."""
    try:
        data = json.loads(text)
        return {str(host): HostLink(up=LinkShape(**entry["up"]), down=LinkShape(**entry["down"]),
                                    cut=bool(entry["cut"])) for host, entry in data.items()}
    except LinkSpecError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise LinkSpecError(f"not a links file ({type(err).__name__}: {err})") from None


def write_links(path: pathlib.Path, links: Mapping[str, HostLink]) -> None:
    """Replace the file in one rename, so the forwarder never reads half of it."""
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    partial.write_text(links_to_json(links))
    os.replace(partial, path)


def read_links(path: pathlib.Path) -> dict[str, HostLink]:
    return links_from_json(path.read_text())
