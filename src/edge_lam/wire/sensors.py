"""Sensor messages as the encoders' plain samples: ``nav_msgs/Odometry`` and ``sensor_msgs/Imu``.

The same functions read rclpy's messages and those rosbags deserialises from a bag (they have the same fields), so
a live topic and a recorded one give the same samples.
"""

from __future__ import annotations

from typing import Any

from edge_lam.encoders.motion import ImuSample, OdometrySample, yaw_from_quaternion
from edge_lam.wire.stamps import to_seconds

__all__ = ["imu_sample", "odometry_sample"]


def odometry_sample(msg: Any) -> OdometrySample:
    """EncoderInputError when the orientation is no rotation (a zero quaternion)."""
    pose, twist, q = msg.pose.pose, msg.twist.twist, msg.pose.pose.orientation
    return OdometrySample(
        stamp=to_seconds(msg.header.stamp), x=pose.position.x, y=pose.position.y,
        yaw=yaw_from_quaternion(q.x, q.y, q.z, q.w), linear_x=twist.linear.x, angular_z=twist.angular.z,
    )


def imu_sample(msg: Any) -> ImuSample:
    w, a, q = msg.angular_velocity, msg.linear_acceleration, msg.orientation
    return ImuSample(
        stamp=to_seconds(msg.header.stamp), angular_velocity=(w.x, w.y, w.z), linear_acceleration=(a.x, a.y, a.z),
        orientation=(q.x, q.y, q.z, q.w), orientation_covariance=msg.orientation_covariance,
        angular_velocity_covariance=msg.angular_velocity_covariance,
        linear_acceleration_covariance=msg.linear_acceleration_covariance,
    )
