"""Laser-scan encoder node: ``sensor_msgs/LaserScan`` on ``scan`` to per-sector nearest-obstacle tokens on
``tokens/scan`` (one message per scan; scores are the nearest distances in metres)."""

from __future__ import annotations

import time

from sensor_msgs.msg import LaserScan

from edge_lam.encoders.encoder_node import EncoderNode
from edge_lam.encoders.scan import ScanBins, ScanEncoder
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare

DEFAULTS = ScanBins()


class ScanEncoderNode(EncoderNode):
    def __init__(self, node_name: str = "scan_encoder", **kwargs) -> None:
        super().__init__(node_name, modality="scan", default_sensor="scan", **kwargs)
        bins = ScanBins(
            sectors=declare(self, "sectors", DEFAULTS.sectors,
                            "Sectors around the robot, counter-clockwise from ahead."),
            distance_edges=tuple(declare(self, "distance_edges", list(DEFAULTS.distance_edges),
                                         "Distance bucket edges in metres, ascending; beyond the last is clear.")),
            mount_yaw=declare(self, "mount_yaw", DEFAULTS.mount_yaw,
                              "The scanner's heading on the robot, rad (pi when mounted backwards)."),
        )
        self._core = ScanEncoder(bins)
        self.publish_vocabulary(self._core.vocabulary)
        self.create_subscription(LaserScan, "scan", self.encode, self.input_qos)

    def encode(self, msg: LaserScan) -> None:
        started = time.perf_counter()
        try:
            encoded = self._core.encode(
                msg.angle_min, msg.angle_max, msg.angle_increment, msg.range_min, msg.range_max,
                msg.ranges, msg.intensities,
            )
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("scan", err, msg.header.stamp)
            return
        self.publish_tokens(encoded, msg.header, started)


def main(args: list[str] | None = None) -> None:
    spin_node(ScanEncoderNode, args)
