"""Motion encoder nodes: ``nav_msgs/Odometry`` on ``odom`` or ``sensor_msgs/Imu`` on ``imu`` to one motion token per
window on ``tokens/odometry`` or ``tokens/imu``.

The bins are parameters (see ``MotionBins``); a token carries the header of the last sample of its window. When the
stamps go back in time (a bag replayed again, a simulation restarted) the windows start over, with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu
from std_msgs.msg import Header

from edge_lam.encoders.encoder_node import EncoderNode
from edge_lam.encoders.motion import ImuMotionEncoder, MotionBins, OdometryMotionEncoder
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.wire.sensors import imu_sample, odometry_sample

DEFAULTS = MotionBins()


def declare_bins(node: EncoderNode) -> MotionBins:
    """The window and bucket parameters, with MotionBins' defaults and descriptions."""
    return MotionBins(
        window_s=declare(node, "window_s", DEFAULTS.window_s, "Seconds of samples per motion token."),
        still_speed=declare(node, "still_speed", DEFAULTS.still_speed, "Below this speed (m/s) the robot is still."),
        speed_edges=tuple(declare(node, "speed_edges", list(DEFAULTS.speed_edges),
                                  "Speed bucket edges above still_speed, m/s, ascending.")),
        speed_names=tuple(declare(node, "speed_names", list(DEFAULTS.speed_names),
                                  "Speed bucket names, one more than speed_edges.")),
        still_yaw_rate=declare(node, "still_yaw_rate", DEFAULTS.still_yaw_rate,
                               "Below this yaw rate (rad/s) the robot is not turning."),
        yaw_rate_edges=tuple(declare(node, "yaw_rate_edges", list(DEFAULTS.yaw_rate_edges),
                                     "Yaw-rate bucket edges above still_yaw_rate, rad/s, ascending.")),
        yaw_rate_names=tuple(declare(node, "yaw_rate_names", list(DEFAULTS.yaw_rate_names),
                                     "Yaw-rate bucket names, one more than yaw_rate_edges.")),
        accel_threshold=declare(node, "accel_threshold", DEFAULTS.accel_threshold,
                                "IMU: mean forward acceleration (m/s^2) that makes accel-forward/backward."),
        vibration_std=declare(node, "vibration_std", DEFAULTS.vibration_std,
                              "IMU: spread of the specific force (m/s^2) that makes vibrating."),
    )


class MotionEncoderNode(EncoderNode):
    """Shared by the odometry and IMU nodes: samples from messages, windows, restarts after a clock jump, stamping."""

    def __init__(self, node_name: str, modality: str, core_type: type, msg_type: type, topic: str,
                 to_sample: Callable, **kwargs) -> None:
        super().__init__(node_name, modality=modality, default_sensor=modality, **kwargs)
        self._core = core_type(declare_bins(self))
        self._to_sample = to_sample
        self._last_stamp: float | None = None
        self._last_header: Header | None = None  # of the last accepted sample: the end of the window a token closes
        self.publish_vocabulary(self._core.vocabulary)
        self.create_subscription(msg_type, topic, self.encode, self.input_qos)

    def encode(self, msg: Odometry | Imu) -> None:
        started = time.perf_counter()
        try:
            sample = self._to_sample(msg)
            if self._last_stamp is not None and sample.stamp < self._last_stamp:
                self.get_logger().warning(
                    f"{self.modality} stamps went back from {self._last_stamp:.3f} s to {sample.stamp:.3f} s: "
                    "starting the windows over"
                )
                self._core.reset()
            encoded = self._core.add(sample)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject(f"{self.modality} sample", err, msg.header.stamp)
            return
        window_end, self._last_header, self._last_stamp = self._last_header, msg.header, sample.stamp
        if encoded is not None:
            self.publish_tokens(encoded, window_end, started)
        else:
            self.record(started)


class OdometryEncoderNode(MotionEncoderNode):
    def __init__(self, node_name: str = "odometry_encoder", **kwargs) -> None:
        super().__init__(node_name, "odometry", OdometryMotionEncoder, Odometry, "odom", odometry_sample, **kwargs)


class ImuEncoderNode(MotionEncoderNode):
    def __init__(self, node_name: str = "imu_encoder", **kwargs) -> None:
        super().__init__(node_name, "imu", ImuMotionEncoder, Imu, "imu", imu_sample, **kwargs)


def odometry_main(args: list[str] | None = None) -> None:
    spin_node(OdometryEncoderNode, args)


def imu_main(args: list[str] | None = None) -> None:
    spin_node(ImuEncoderNode, args)
