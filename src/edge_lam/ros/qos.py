"""The QoS profiles of edge_lam, named once and imported by every node.

- SENSOR_DATA: camera, IMU, odometry and scan input; best effort with a small queue, so a slow encoder sees the
  newest frame instead of a backlog.
- TENSORS: hidden states, activations and gradients between modules; every message matters, and a keep-last
  queue silently dropped most of a fast burst of 512 KB messages here, so keep-all.
- TOKENS: semantic tokens from the encoders; reliable, keep-last 100: small messages that a slow subscriber
  should still get, but a subscriber a hundred messages behind loses the oldest rather than growing the queue.
- PREDICTIONS: channel predictions (``csi/prediction``); reliable, keep-last 100, as TOKENS: one per CSI window,
  none lost to a slow subscriber short of a hundred behind.
- CONTROL: requests, results and commands; reliable, keep-all, for the same reason.
- LATCHED: placement plans; reliable and transient-local, so a late joiner gets the last one.
- ADVERTS: host agents' ComputeAdverts; reliable, keep-last 1 (only the newest advert of a host matters), volatile
  (an advert is stale by the next period anyway), liveliness AUTOMATIC with a lease of ``ADVERT_LEASE_S`` = 0.3 s
  (``with_lease`` sets another): a reader (the coordinator) learns that a host's process is gone within the lease,
  even when it died by kill -9. AUTOMATIC is asserted by the DDS participant's own thread, so an agent busy loading
  a model does not look dead. Fast DDS checks a writer against the lease the *reader* requests (measured: 0.29 s
  with 0.3 s on both sides; 3-5 s when the reader requests 10 s), and a writer matches only readers that request
  a lease at least as long as it offers: the reader's lease is the detection time, the writer's must not exceed it.
- VOCABULARIES: the same, with room for one vocabulary from each of several encoders on one topic (a depth-1
  reader keeps only the last of two that arrive together).
"""

from rclpy.duration import Duration
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

__all__ = [
    "ADVERTS",
    "ADVERTS_READER",
    "ADVERT_LEASE_S",
    "CONTROL",
    "LATCHED",
    "PREDICTIONS",
    "RELIABLE_SENSOR_DATA",
    "SENSOR_DATA",
    "TENSORS",
    "TOKENS",
    "VOCABULARIES",
    "with_lease",
]

SENSOR_DATA = qos_profile_sensor_data
ADVERT_LEASE_S = 0.3


def _reliable(depth: int | None = None, *, latched: bool = False, lease_s: float | None = None) -> QoSProfile:
    """Reliable; keep-last ``depth`` (keep-all when None); transient-local when ``latched``; with automatic
    liveliness and that lease when ``lease_s`` is given."""
    history = {"history": HistoryPolicy.KEEP_ALL} if depth is None else \
        {"history": HistoryPolicy.KEEP_LAST, "depth": depth}
    liveliness = {} if lease_s is None else \
        {"liveliness": LivelinessPolicy.AUTOMATIC, "liveliness_lease_duration": Duration(seconds=lease_s)}
    durability = DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE
    return QoSProfile(**history, reliability=ReliabilityPolicy.RELIABLE, durability=durability, **liveliness)


def with_lease(profile: QoSProfile, lease_s: float) -> QoSProfile:
    """``profile`` with automatic liveliness and this lease: a reader so configured hears within ``lease_s`` that a
    writer's process is gone (its liveliness callback fires), a writer so configured matches readers whose lease is
    at least as long."""
    if not lease_s > 0:
        raise ValueError(f"a liveliness lease must be > 0 s, got {lease_s}")
    return QoSProfile(history=profile.history, depth=profile.depth, reliability=profile.reliability,
                      durability=profile.durability, liveliness=LivelinessPolicy.AUTOMATIC,
                      liveliness_lease_duration=Duration(seconds=lease_s))


# For sensor input that must not be dropped (bag replay in CI); it matches only reliable publishers.
RELIABLE_SENSOR_DATA = _reliable(100)
TOKENS = _reliable(100)
PREDICTIONS = _reliable(100)
TENSORS = _reliable()
CONTROL = _reliable()
LATCHED = _reliable(1, latched=True)
VOCABULARIES = _reliable(16, latched=True)
ADVERTS = _reliable(1, lease_s=ADVERT_LEASE_S)
# Keep-last counts per topic, not per writer: in a depth-1 reader the adverts of hosts that arrive together would
# overwrite each other, so readers keep room for a whole fleet's burst. Depth does not affect matching. No lease:
# it matches writers of any lease; a reader that watches liveliness (the coordinator) adds one with ``with_lease``.
ADVERTS_READER = _reliable(64)
