"""Laser-scan tokens: the nearest obstacle in each sector around the robot, quantised into distance words.

A planner or a language model asks "what is close, and where", not for 360 ranges; one word per sector answers it
in a fixed grid of ``sectors`` tokens. Sector 0 is centred on the robot's +x axis (front) and the others follow
counter-clockwise (REP 103: +y is left), each covering half a sector's width either side of its centre, so the back
sector wraps across +-pi. The words are ``"<sector> <distance>"``: the distance is a bucket of the nearest return
(``<0.3m``, ``0.3-0.6m``, ... with the default edges), ``clear`` when nothing returned nearer than the last edge, or
``unseen`` when no ray of the scan points into the sector (a scanner with less than a full circle of view).

Returns outside ``[range_min, range_max]``, infinite or NaN are "no return", as REP 117 reads them. Scores are the
nearest return in metres: inf for a sector without one, NaN for an unseen sector. Distances are from the scanner,
not from the robot's centre.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

__all__ = ["ScanBins", "ScanEncoder"]

# Names for the sector counts people use; any other count is named by bearing.
_SECTOR_NAMES = {
    2: ("front", "back"),
    4: ("front", "left", "back", "right"),
    8: ("front", "front-left", "left", "back-left", "back", "back-right", "right", "front-right"),
}


@dataclasses.dataclass(frozen=True)
class ScanBins:
    """How a scan is cut into tokens: sector count, distance bucket edges (m, ascending) and the scanner's mounting."""

    sectors: int = 8
    distance_edges: tuple[float, ...] = (0.3, 0.6, 1.2, 2.5)
    mount_yaw: float = 0.0  # rad, the scanner frame's heading in the robot's base frame (pi: mounted backwards)

    def __post_init__(self) -> None:
        if isinstance(self.sectors, bool) or not isinstance(self.sectors, int) or self.sectors < 1:
            raise ValueError(f"sectors must be a positive integer, got {self.sectors!r}")
        edges = self.distance_edges
        if not edges or not all(math.isfinite(e) and e > 0 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"distance_edges must be positive and strictly ascending, got {edges}")
        if not math.isfinite(self.mount_yaw):
            raise ValueError(f"mount_yaw must be finite, got {self.mount_yaw}")

    def sector_names(self) -> tuple[str, ...]:
        """Sector names in id order, counter-clockwise from the front."""
        if self.sectors in _SECTOR_NAMES:
            return _SECTOR_NAMES[self.sectors]
        width = 360.0 / self.sectors
        return tuple(f"bearing {math.remainder(i * width, 360.0):+g}deg" for i in range(self.sectors))

    def distance_words(self) -> tuple[str, ...]:
        """Distance words in id order: the buckets from near to far, then clear, then unseen."""
        edges = self.distance_edges
        buckets = [f"<{edges[0]:g}m"] + [f"{a:g}-{b:g}m" for a, b in itertools.pairwise(edges)]
        return (*buckets, "clear", "unseen")


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Which rays fall in which sector, for one scan layout; rays sorted by sector so a reduceat finds the minima."""

    order: np.ndarray  # ray indices sorted by sector
    starts: np.ndarray  # where each seen sector's rays begin in ``order``
    seen: np.ndarray  # the sector of each entry of ``starts``


class ScanEncoder:
    """``sensor_msgs/LaserScan`` fields -> ``Encoded(ids, shape=(sectors,), scores=nearest metres)``."""

    def __init__(self, bins: ScanBins | None = None) -> None:
        self.bins = bins or ScanBins()
        distances = self.bins.distance_words()
        words = tuple(f"{s} {d}" for s in self.bins.sector_names() for d in distances)
        edges = ",".join(f"{e:g}" for e in self.bins.distance_edges)
        version = f"1; {self.bins.sectors} sectors, distance edges {edges} m, mount yaw {self.bins.mount_yaw:g} rad"
        self.vocabulary = Vocabulary("laser_scan", version, words)
        self._edges = np.asarray(self.bins.distance_edges, dtype=np.float32)
        self._distance_count = len(distances)
        self._clear, self._unseen = len(distances) - 2, len(distances) - 1
        # Scans of one scanner share their layout; the sector of every ray is worked out once for it.
        self._layout: tuple[int, float, float] | None = None
        self._geometry: _Geometry | None = None

    def encode(
        self,
        angle_min: float,
        angle_max: float,
        angle_increment: float,
        range_min: float,
        range_max: float,
        ranges: Sequence[float] | np.ndarray,
        intensities: Sequence[float] | np.ndarray = (),
    ) -> Encoded:
        """Tokens of one scan; a scan whose fields contradict each other raises EncoderInputError."""
        for name, value in (
            ("angle_min", angle_min),
            ("angle_max", angle_max),
            ("angle_increment", angle_increment),
            ("range_min", range_min),
            ("range_max", range_max),
        ):
            if not math.isfinite(value):
                raise EncoderInputError(f"laser scan {name} is {value}; it must be finite")
        if angle_increment == 0.0:
            raise EncoderInputError("laser scan angle_increment is 0; the rays' directions are unknown")
        if not 0.0 <= range_min < range_max:
            raise EncoderInputError(f"laser scan needs 0 <= range_min < range_max, got {range_min} and {range_max}")
        distances = np.asarray(ranges, dtype=np.float32)
        if distances.ndim != 1 or distances.size == 0:
            raise EncoderInputError(f"laser scan ranges must be a non-empty list, got shape {distances.shape}")
        # Drivers differ on whether angle_max is the last ray's angle or one step past it: allow one ray either way.
        expected = (angle_max - angle_min) / angle_increment + 1.0
        if abs(distances.size - expected) > 1.0 + 1e-6:
            raise EncoderInputError(
                f"laser scan has {distances.size} ranges, but {angle_min:g}..{angle_max:g} rad in steps of "
                f"{angle_increment:g} rad make {expected:.1f}"
            )
        if len(intensities) not in (0, distances.size):
            raise EncoderInputError(
                f"laser scan has {len(intensities)} intensities for {distances.size} ranges (must be equal, or none)"
            )
        geometry = self._geometry_of(distances.size, angle_min, angle_increment)
        # NaN fails both comparisons, and inf fails the second: both count as no return.
        returned = (distances >= range_min) & (distances <= range_max)
        nearest_sorted = np.where(returned, distances, np.float32(np.inf))[geometry.order]
        nearest = np.full(self.bins.sectors, np.nan, dtype=np.float32)
        nearest[geometry.seen] = np.minimum.reduceat(nearest_sorted, geometry.starts)
        buckets = np.searchsorted(self._edges, nearest, side="right")  # inf and NaN land past the last edge: clear
        buckets[np.isnan(nearest)] = self._unseen
        ids = np.arange(self.bins.sectors) * self._distance_count + buckets
        return Encoded(ids=ids, shape=(self.bins.sectors,), scores=nearest)

    def _geometry_of(self, count: int, angle_min: float, angle_increment: float) -> _Geometry:
        layout = (count, angle_min, angle_increment)
        if layout != self._layout or self._geometry is None:
            width = 2.0 * math.pi / self.bins.sectors
            angles = self.bins.mount_yaw + angle_min + np.arange(count) * angle_increment
            sector = np.floor(angles / width + 0.5).astype(np.int64) % self.bins.sectors
            order = np.argsort(sector, kind="stable")
            sorted_sector = sector[order]
            starts = np.flatnonzero(np.diff(sorted_sector, prepend=-1))
            self._geometry = _Geometry(order=order, starts=starts, seen=sorted_sector[starts])
            self._layout = layout
        return self._geometry
