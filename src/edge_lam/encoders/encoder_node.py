"""What every encoder node shares: the tokens and vocabulary topics, sequence numbers, timing and rejected input.

A subclass subscribes to its sensor, turns each message into an ``Encoded`` with its pure core and hands it to
:meth:`EncoderNode.publish_tokens`; input the core refuses goes to :meth:`EncoderNode.reject`, which logs it and
keeps the node running.
"""

from __future__ import annotations

import collections
import time

import numpy as np
from builtin_interfaces.msg import Time
from edge_lam_msgs.msg import SemanticTokens
from edge_lam_msgs.msg import Vocabulary as VocabularyMsg
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.timer import Timer
from std_msgs.msg import Header

from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import RELIABLE_SENSOR_DATA, SENSOR_DATA, TOKENS, VOCABULARIES
from edge_lam.wire.stamps import to_seconds
from edge_lam.wire.tokens import to_semantic_tokens, to_vocabulary_msg

LATENCY_WINDOW = 10_000  # per-message latencies kept for the stats line and the benchmark
MAX_REASON_CHARS = 300  # of a rejection's reason in the log


def rejection_reason(error: Exception) -> str:
    """Why an input was refused, for the log: an EncoderInputError's own words, else the exception's type too; cut
    short, since the reason may quote the input (a 1 MB field must not make a 1 MB line)."""
    why = str(error) if isinstance(error, EncoderInputError) else f"{type(error).__name__}: {error}"
    return f"{why[:MAX_REASON_CHARS]}... ({len(why)} characters)" if len(why) > MAX_REASON_CHARS else why


def latency_summary(latencies_s: collections.deque[float]) -> str:
    """The stats line's latency part: p50 and p99 of the kept latencies, ms."""
    latencies_ms = np.asarray(latencies_s) * 1e3
    return (f"latency over the last {latencies_ms.size}: p50 {np.percentile(latencies_ms, 50):.2f} ms, "
            f"p99 {np.percentile(latencies_ms, 99):.2f} ms")


class EncoderNode(Node):
    """Publishes ``tokens/<modality>`` and, latched, ``tokens/<modality>/vocabulary`` (relative to the namespace)."""

    def __init__(self, node_name: str, modality: str, default_sensor: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.modality = modality
        self.robot_id = declare(self, "robot_id", "robot", "Robot id written into every SemanticTokens message.")
        self.sensor = declare(self, "sensor", default_sensor, "Sensor name written into every SemanticTokens message.")
        reliable = declare(
            self, "reliable_input", False,
            "Subscribe to the sensor reliably (keep-last 100), e.g. for bag replay in CI; the default, best effort "
            "(sensor data QoS), matches every publisher and keeps only the newest messages when the encoder lags.",
        )
        stats_period_s = declare(
            self, "stats_period_s", 10.0,
            "Seconds between log lines with message counts and latency; 0 turns them off.",
            on_change=self._start_stats, low=0.0,
        )
        self.input_qos: QoSProfile = RELIABLE_SENSOR_DATA if reliable else SENSOR_DATA
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.published = 0
        self.rejected = 0
        self.handled = 0  # inputs taken, whatever came of them
        self._vocabulary: Vocabulary | None = None
        self._tokens_pub = self.create_publisher(SemanticTokens, f"tokens/{modality}", TOKENS)
        self._vocabulary_pub = self.create_publisher(VocabularyMsg, f"tokens/{modality}/vocabulary", VOCABULARIES)
        self._stats_timer: Timer | None = None
        self._start_stats(stats_period_s)

    def _start_stats(self, period_s: float) -> None:
        """Log the stats every ``period_s`` from now on (never for 0); live, so `ros2 param set` takes effect."""
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None
        if period_s > 0:
            self._stats_timer = self.create_timer(period_s, self.log_stats)

    def publish_vocabulary(self, vocabulary: Vocabulary) -> None:
        self._vocabulary = vocabulary
        self._vocabulary_pub.publish(to_vocabulary_msg(vocabulary, self.modality))
        self.get_logger().info(
            f"{vocabulary.encoder} {vocabulary.version}: {len(vocabulary.words)} words on "
            f"{self._vocabulary_pub.topic_name}, tokens on {self._tokens_pub.topic_name}"
        )

    def publish_tokens(
        self, encoded: Encoded, header: Header | None, started: float, embedding_dtype: str = "float32"
    ) -> None:
        """Publish ``encoded`` with the sensor's header (now, when it has none); ``started`` is the callback's
        ``time.perf_counter()``, so the recorded latency runs from the input callback to the publish."""
        assert self._vocabulary is not None, "publish_vocabulary() first"
        if header is None:
            header = Header(stamp=self.get_clock().now().to_msg())
        self._tokens_pub.publish(to_semantic_tokens(
            encoded, robot_id=self.robot_id, sensor=self.sensor, modality=self.modality,
            vocabulary=self._vocabulary, seq=self.published, embedding_dtype=embedding_dtype, header=header,
            encode_seconds=time.perf_counter() - started,
        ))
        self.published += 1
        self.record(started)

    def record(self, started: float) -> None:
        """Count an input as handled; also called directly for input that only joins a window (no publish)."""
        self.handled += 1
        self.latencies_s.append(time.perf_counter() - started)

    def reject(self, what: str, error: Exception, stamp: Time | None = None) -> None:
        """Log input the core refused, or that failed in any other way (then with the error's type: a bug or a
        resource running out, which must not end the node either); the node keeps running and the sequence numbers
        have no gap."""
        self.rejected += 1
        self.handled += 1
        when = f" stamped {to_seconds(stamp):.9f}" if stamp is not None else ""
        self.get_logger().error(f"rejected {what}{when} ({self.rejected} so far): {rejection_reason(error)}")

    def log_stats(self) -> None:
        if not self.latencies_s:
            self.get_logger().info(f"no {self.modality} tokens yet ({self.rejected} inputs rejected)")
            return
        self.get_logger().info(
            f"{self.handled} {self.modality} inputs, {self.published} token messages, {self.rejected} rejected; "
            f"{latency_summary(self.latencies_s)}"
        )
