"""The QoS profiles of edge_lam, named once and imported by every node.

- SENSOR_DATA: camera, IMU, odometry and scan input; best effort with a small queue, so a slow encoder sees the
  newest frame instead of a backlog.
- TENSORS: hidden states, activations and gradients between modules; every message matters, and a keep-last
  queue silently dropped most of a fast burst of 512 KB messages here, so keep-all.
- TOKENS: semantic tokens from the encoders; reliable, keep-last 100: small messages that a slow subscriber
  should still get, but a subscriber a hundred messages behind loses the oldest rather than growing the queue.
- CONTROL: requests, results and commands; reliable, keep-all, for the same reason.
- LATCHED: placement plans; reliable and transient-local, so a late joiner gets the last one.
- VOCABULARIES: the same, with room for one vocabulary from each of several encoders on one topic (a depth-1
  reader keeps only the last of two that arrive together).
"""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

__all__ = ["CONTROL", "LATCHED", "RELIABLE_SENSOR_DATA", "SENSOR_DATA", "TENSORS", "TOKENS", "VOCABULARIES"]

SENSOR_DATA = qos_profile_sensor_data

# For sensor input that must not be dropped (bag replay in CI); it matches only reliable publishers.
RELIABLE_SENSOR_DATA = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

TOKENS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

TENSORS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

CONTROL = QoSProfile(
    history=HistoryPolicy.KEEP_ALL,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

LATCHED = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

VOCABULARIES = QoSProfile(
    depth=16,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
