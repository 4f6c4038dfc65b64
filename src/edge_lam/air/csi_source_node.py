"""CSI source node: the windows of a prepared channel split as ``edge_lam_msgs/ChannelState`` on ``csi``, at a
rate, for users and tests without a radio.

Each window is ``window`` slots of one draw's channel *estimates* (``channels.estimate`` at ``snr_db``; the noise
variance is in the message), cut every ``stride`` slots as ``channels.windows`` cuts the bench's windows (with 4
slots after each). Stamps are the slots' times: draw ``d``'s slot ``t`` is ``start + (d * steps + t) * period``
with ``start`` the node's clock when it starts publishing, so the draws follow each other on one link; a window's
stamp is its newest slot's. After ``count`` windows (all of the split's for 0) it waits until reliable subscribers
have every message, and ends.
"""

from __future__ import annotations

import dataclasses
import math

from edge_lam_msgs.msg import ChannelState
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import Header

from edge_lam.air.channels import SPLITS, estimate, load_split, windows
from edge_lam.assets.cache import air_channels_dir
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import RELIABLE_SENSOR_DATA
from edge_lam.wire.csi import CsiWindow, to_channel_state
from edge_lam.wire.stamps import from_ns

ACK_TIMEOUT_S = 10.0
FUTURE = 4  # slots kept after each window, so the windows are the bench's (each has its scored truth after it)
MATCH_SETTLE_S = 0.5  # as edge-lam replay: the subscriber's side of the match may come a little later


class CsiSourceNode(Node):
    def __init__(self, node_name: str = "csi_source", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        split = declare(self, "split", "test", f"Split of the prepared channel set: {', '.join(SPLITS)}.",
                        check=lambda v: None if v in SPLITS else f"one of {', '.join(SPLITS)}")
        snr_db = declare(self, "snr_db", 20.0, "SNR of the channel estimates, dB (.inf: the true channel).")
        rate_hz = declare(self, "rate_hz", 10.0, "Windows published per second.", low=1e-3, high=1e4)
        count = declare(self, "count", 0, "Windows to publish, then end; 0: every window of the split.", low=0)
        self.link_id = declare(self, "link_id", "cell0/ue0", "Link id written into every message.")
        window = declare(self, "window", 16, "Slots per window.", low=1)
        stride = declare(self, "stride", 4, "Slots between the starts of a draw's windows.", low=1)
        self.wait_subscribers = declare(self, "wait_subscribers", 0,
                                        "Publish only once csi has this many subscribers (then 0.5 s more).", low=0)
        seed = declare(self, "seed", 0, "Seed of the estimation noise.")
        try:
            channel_set = load_split(air_channels_dir(), split)
        except OSError as err:  # not prepared: the error says how to prepare it
            raise SystemExit(str(err)) from None
        settings = channel_set.settings
        truth_power = float((abs(channel_set.h) ** 2).mean())
        channel_set = dataclasses.replace(channel_set, h=estimate(channel_set.h, snr_db, seed))
        try:
            cut = windows(channel_set, past=window, future=FUTURE, stride=stride)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        self.windows = cut.past
        starts = range(0, settings.steps - window - FUTURE + 1, stride)  # as channels.windows cuts them
        self.newest_slot = [d * settings.steps + s + window - 1 for d in range(len(channel_set)) for s in starts]
        self.noise_variance = 0.0 if math.isinf(snr_db) else truth_power * 10 ** (-snr_db / 10)
        self.settings = settings
        self.total = len(self.windows) if count == 0 else min(count, len(self.windows))
        self.sent = 0
        self.start_ns: int | None = None
        self._settled_ns: int | None = None
        self._publisher = self.create_publisher(ChannelState, "csi", RELIABLE_SENSOR_DATA)
        self._timer = self.create_timer(1.0 / rate_hz, self.publish_next)
        self.get_logger().info(
            f"{split}: {self.total} of {len(self.windows)} windows of {window} slots at {rate_hz:g} Hz, SNR "
            f"{snr_db:g} dB, on {self._publisher.topic_name}")

    def publish_next(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if self.start_ns is None:
            if self._publisher.get_subscription_count() < self.wait_subscribers:
                return
            if self._settled_ns is None:
                self._settled_ns = now_ns + int(MATCH_SETTLE_S * 1e9)
            if now_ns < self._settled_ns:
                return
            self.start_ns = now_ns
        period_ns = round(self.settings.period_s * 1e9)
        header = Header(stamp=from_ns(self.start_ns + self.newest_slot[self.sent] * period_ns),
                        frame_id=self.link_id.partition("/")[0])
        self._publisher.publish(to_channel_state(CsiWindow(
            self.windows[self.sent], self.link_id, self.settings.carrier_hz,
            self.settings.subcarrier_spacing_hz * self.settings.subcarrier_stride, self.settings.period_s,
            self.noise_variance), header))
        self.sent += 1
        if self.sent == self.total:
            self._timer.cancel()
            acked = self._publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
            self.get_logger().info(f"published {self.sent} CSI windows"
                                   + ("" if acked else f" (not all acknowledged within {ACK_TIMEOUT_S:g} s)"))
            raise SystemExit(0)


def main(args: list[str] | None = None) -> None:
    spin_node(CsiSourceNode, args)
