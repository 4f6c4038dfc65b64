"""Motion tokens: windows of odometry or IMU samples quantised into a few words a language model can read.

One odometry or IMU message says little and arrives 20-200 times a second; the model wants one word per window
(half a second by default) saying how the robot moves. Each encoder accumulates samples and returns a token from
``add`` when a sample's stamp falls past the end of the open window; that sample opens the next window.

Odometry words are ``"<linear> <turn>"``: linear is ``still``, ``forward-<speed>`` or ``reverse-<speed>`` from the
window's mean ``twist.linear.x``; turn is ``none``, ``left-<rate>`` or ``right-<rate>`` from the mean
``twist.angular.z`` (left is +z, counter-clockwise seen from above, REP 103). Odometry that leaves its twist at zero
(some pose-only sources) is read from the pose path instead, so it is not mistaken for a robot standing still.

IMU words are ``"<push> <turn>"``. The gyro measures the turn directly. An accelerometer can't measure velocity, so
an IMU can't tell forward from reverse, nor a stopped robot from one cruising smoothly; the words say only what it
can sense: ``accel-forward`` / ``accel-backward`` (mean acceleration along the robot's x axis, gravity removed:
speeding up forwards looks the same as braking in reverse), else ``vibrating`` (the spread of the specific force's
magnitude, typical of driving over a floor or being handled), else ``steady`` (still, or moving at constant
velocity on smooth ground). Samples must be in the robot's base frame (x forward, z up).

Every encoder returns ``Encoded(ids=[one id])`` with the window's continuous values as a one-row embedding
(odometry: mean linear m/s, mean yaw rate rad/s; IMU: mean yaw rate rad/s, mean forward acceleration m/s^2,
spread of the specific force m/s^2), so a consumer that wants numbers need not re-read the sensor.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

__all__ = [
    "STANDARD_GRAVITY",
    "ImuMotionEncoder",
    "ImuSample",
    "MotionBins",
    "OdometryMotionEncoder",
    "OdometrySample",
    "yaw_from_quaternion",
]

STANDARD_GRAVITY = 9.80665  # m/s^2; sensor_msgs/Imu linear_acceleration includes it (REP 145)
_NOT_GIVEN = (-1.0,) + (0.0,) * 8  # REP 145: covariance element 0 = -1 says the field is not given
_UNKNOWN_COVARIANCE = (0.0,) * 9  # REP 145: given, covariance unknown


@dataclasses.dataclass(frozen=True)
class MotionBins:
    """Thresholds of the motion words, one place to tune them for a robot; defaults suit a small indoor robot.

    A value below the ``still_*`` threshold is "still" / "none"; above it, ``*_edges`` (ascending) split the
    magnitude into buckets named by ``*_names`` (one more name than edges), each bucket including its lower edge.
    """

    window_s: float = 0.5  # s of samples per token: long enough to average out odometry jitter, short for control
    still_speed: float = 0.02  # m/s; wheel odometry creeps and jitters below this
    speed_edges: tuple[float, ...] = (0.25,)  # m/s
    speed_names: tuple[str, ...] = ("slow", "fast")
    still_yaw_rate: float = 0.1  # rad/s; path-following corrections on a straight line stay below this
    yaw_rate_edges: tuple[float, ...] = (0.5,)  # rad/s
    yaw_rate_names: tuple[str, ...] = ("slow", "fast")
    accel_threshold: float = 0.3  # m/s^2 of mean forward acceleration before an IMU window says accel-*
    vibration_std: float = 0.3  # m/s^2 spread of |specific force| before an IMU window says vibrating

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a positive number of seconds, got {self.window_s}")
        _check_buckets("speed", self.still_speed, self.speed_edges, self.speed_names)
        _check_buckets("yaw_rate", self.still_yaw_rate, self.yaw_rate_edges, self.yaw_rate_names)
        for name in ("accel_threshold", "vibration_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value}")

    def linear_words(self) -> tuple[str, ...]:
        """Odometry's linear words in id order: still, forward buckets, reverse buckets."""
        return ("still", *(f"forward-{n}" for n in self.speed_names), *(f"reverse-{n}" for n in self.speed_names))

    def turn_words(self) -> tuple[str, ...]:
        """Turn words in id order: none, left buckets, right buckets."""
        return ("none", *(f"left-{n}" for n in self.yaw_rate_names), *(f"right-{n}" for n in self.yaw_rate_names))

    def linear_index(self, speed: float) -> int:
        """Index into ``linear_words`` of a signed forward speed (m/s)."""
        return _signed_bucket(speed, self.still_speed, self.speed_edges)

    def turn_index(self, yaw_rate: float) -> int:
        """Index into ``turn_words`` of a signed yaw rate (rad/s, + is left)."""
        return _signed_bucket(yaw_rate, self.still_yaw_rate, self.yaw_rate_edges)

    def describe(self) -> str:
        """The thresholds in words, used as the vocabulary version so a recording states what its words meant."""
        return (
            f"window {self.window_s:g} s; still below {self.still_speed:g} m/s, speed edges "
            f"{_edges(self.speed_edges)} m/s; no turn below {self.still_yaw_rate:g} rad/s, yaw-rate edges "
            f"{_edges(self.yaw_rate_edges)} rad/s"
        )


def _edges(edges: tuple[float, ...]) -> str:
    return ",".join(f"{e:g}" for e in edges)


def _check_buckets(what: str, still: float, edges: tuple[float, ...], names: tuple[str, ...]) -> None:
    if not (math.isfinite(still) and still > 0):
        raise ValueError(f"still_{what} must be positive, got {still}")
    if not all(math.isfinite(e) for e in edges) or any(a >= b for a, b in itertools.pairwise((still, *edges))):
        raise ValueError(f"{what}_edges must ascend above still_{what} = {still}, got {edges}")
    if len(names) != len(edges) + 1 or len(set(names)) != len(names):
        raise ValueError(f"{what}_names needs {len(edges) + 1} distinct names for edges {edges}, got {names}")


def _signed_bucket(value: float, still: float, edges: tuple[float, ...]) -> int:
    """0 below ``still``; 1.. for positive buckets; then the negative buckets in the same order."""
    magnitude = abs(value)
    if magnitude < still:
        return 0
    bucket = bisect.bisect_right(edges, magnitude)
    return 1 + bucket if value > 0 else 2 + len(edges) + bucket


def _require_finite(source: str, **values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise EncoderInputError(f"{source} {name} is {value}; every field must be a finite number")


def _wrap(angle: float) -> float:
    return math.remainder(angle, math.tau)


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Heading (rad, about +z) of an orientation quaternion, whatever its length; a zero or non-finite one raises."""
    _require_finite("quaternion", x=x, y=y, z=z, w=w)
    if x * x + y * y + z * z + w * w < 1e-12:
        raise EncoderInputError("quaternion has zero length; it is no orientation")
    # This form needs no normalising: both arguments scale with the squared length.
    return math.atan2(2.0 * (w * z + x * y), w * w + x * x - y * y - z * z)


@dataclasses.dataclass(frozen=True, slots=True)
class OdometrySample:
    """One ``nav_msgs/Odometry`` as plain values: stamp (s), pose in the odom frame, twist in the child frame."""

    stamp: float
    x: float
    y: float
    yaw: float  # rad, see yaw_from_quaternion
    linear_x: float  # m/s, twist.twist.linear.x
    angular_z: float  # rad/s, twist.twist.angular.z


@dataclasses.dataclass(frozen=True, slots=True)
class ImuSample:
    """One ``sensor_msgs/Imu`` as plain values in the robot's base frame; covariances as REP 145 uses them.

    A covariance whose element 0 is -1 says its field is not given; the default orientation is not given.
    """

    stamp: float
    angular_velocity: Sequence[float]  # x, y, z rad/s
    linear_acceleration: Sequence[float]  # x, y, z m/s^2, gravity included
    orientation: Sequence[float] = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w
    orientation_covariance: Sequence[float] = _NOT_GIVEN
    angular_velocity_covariance: Sequence[float] = _UNKNOWN_COVARIANCE
    linear_acceleration_covariance: Sequence[float] = _UNKNOWN_COVARIANCE


class _WindowEncoder:
    """Windowing shared by the motion encoders: stamp checks, window closing, and the token of a closed window.

    A sample is checked whole before anything changes, so a rejected one leaves the encoder as it was.
    """

    def __init__(self, bins: MotionBins, vocabulary: Vocabulary) -> None:
        self.bins = bins
        self.vocabulary = vocabulary
        self.reset()

    @property
    def last_window(self) -> tuple[float, float] | None:
        """Stamps (s) of the first and last sample of the window behind the most recent token; None before one."""
        return self._last_window

    def reset(self) -> None:
        """Forget everything, e.g. after the clock jumped back (a bag replayed again, a simulation restarted)."""
        self._last_stamp: float | None = None
        self._window_start: float | None = None
        self._last_window: tuple[float, float] | None = None
        self._start_window()

    def _accept_stamp(self, source: str, stamp: float) -> Encoded | None:
        """Check the stamp; close the open window if ``stamp`` lies past it. Call only once the sample is valid."""
        _require_finite(source, stamp=stamp)
        if self._last_stamp is not None and stamp <= self._last_stamp:
            raise EncoderInputError(
                f"{source} stamp {stamp:.9f} s is not after the last accepted {self._last_stamp:.9f} s "
                "(duplicate or out of order); call reset() if the clock jumped back"
            )
        encoded = None
        if self._window_start is not None and stamp - self._window_start >= self.bins.window_s:
            token_id, features = self._close_window()
            self._last_window = (self._window_start, self._last_stamp)
            encoded = Encoded(ids=[token_id], embedding=np.array([features], dtype=np.float32))
            self._start_window()
            self._window_start = stamp
        elif self._window_start is None:
            self._window_start = stamp
        self._last_stamp = stamp
        return encoded

    def _start_window(self) -> None:
        raise NotImplementedError

    def _close_window(self) -> tuple[int, tuple[float, ...]]:
        raise NotImplementedError


class OdometryMotionEncoder(_WindowEncoder):
    """Odometry -> one ``"<linear> <turn>"`` token per window, from the window's mean twist.

    The twist is the odometry's own body-frame velocity, so it needs no previous window and survives jumps of the
    pose. Only when a window's twists are all exactly zero are speed and yaw rate taken from the pose path (each step
    since the previous sample projected on its mid heading): a zero that exact means the twist is not filled, and a
    robot that really stands still has a still pose path too.
    """

    def __init__(self, bins: MotionBins | None = None) -> None:
        bins = bins or MotionBins()
        linear, turn = bins.linear_words(), bins.turn_words()
        words = tuple(f"{a} {b}" for a in linear for b in turn)
        super().__init__(bins, Vocabulary("odometry_motion", f"1; {bins.describe()}", words))
        self._turn_count = len(turn)

    def reset(self) -> None:
        self._previous: OdometrySample | None = None
        super().reset()

    def _start_window(self) -> None:
        self._count = 0
        self._sum_speed = self._sum_yaw_rate = 0.0
        self._twist_given = False
        self._path_forward = self._path_turn = self._path_time = 0.0

    def add(self, sample: OdometrySample) -> Encoded | None:
        """Take one sample; return the token of the window it closes, if any. Bad samples raise EncoderInputError."""
        _require_finite(
            "odometry", x=sample.x, y=sample.y, yaw=sample.yaw, linear_x=sample.linear_x, angular_z=sample.angular_z
        )
        encoded = self._accept_stamp("odometry", sample.stamp)
        self._count += 1
        self._sum_speed += sample.linear_x
        self._sum_yaw_rate += sample.angular_z
        self._twist_given = self._twist_given or sample.linear_x != 0.0 or sample.angular_z != 0.0
        previous = self._previous
        if previous is not None:
            turn = _wrap(sample.yaw - previous.yaw)
            heading = previous.yaw + 0.5 * turn
            self._path_forward += (sample.x - previous.x) * math.cos(heading) + (sample.y - previous.y) * math.sin(
                heading
            )
            self._path_turn += turn
            self._path_time += sample.stamp - previous.stamp
        self._previous = sample
        return encoded

    def _close_window(self) -> tuple[int, tuple[float, ...]]:
        if self._twist_given:
            speed, yaw_rate = self._sum_speed / self._count, self._sum_yaw_rate / self._count
        elif self._path_time > 0.0:
            speed, yaw_rate = self._path_forward / self._path_time, self._path_turn / self._path_time
        else:  # the first window after a reset, of one sample with zero twist: nothing says it moved
            speed = yaw_rate = 0.0
        token_id = self.bins.linear_index(speed) * self._turn_count + self.bins.turn_index(yaw_rate)
        return token_id, (speed, yaw_rate)


class ImuMotionEncoder(_WindowEncoder):
    """IMU -> one ``"<push> <turn>"`` token per window (see the module docstring for what an IMU can't tell).

    Gravity is removed from the forward acceleration with the IMU's orientation when it gives one; without one the
    robot is taken to be level, and a slope reads as acceleration (about 0.17 m/s^2 per degree of pitch).
    """

    PUSH_WORDS = ("steady", "vibrating", "accel-forward", "accel-backward")

    def __init__(self, bins: MotionBins | None = None) -> None:
        bins = bins or MotionBins()
        turn = bins.turn_words()
        words = tuple(f"{a} {b}" for a in self.PUSH_WORDS for b in turn)
        version = (
            f"1; {bins.describe()}; accel beyond {bins.accel_threshold:g} m/s^2, "
            f"vibrating from {bins.vibration_std:g} m/s^2"
        )
        super().__init__(bins, Vocabulary("imu_motion", version, words))
        self._turn_count = len(turn)

    def _start_window(self) -> None:
        self._count = 0
        self._sum_yaw_rate = self._sum_forward = 0.0
        # Welford's running mean and squared deviations of |specific force|: stable at ~9.8 +- 0.01.
        self._force_mean = self._force_m2 = 0.0

    def add(self, sample: ImuSample) -> Encoded | None:
        """Take one sample; return the token of the window it closes, if any. Bad samples raise EncoderInputError."""
        _, _, wz = _vector("angular_velocity", sample.angular_velocity, 3)
        ax, ay, az = _vector("linear_acceleration", sample.linear_acceleration, 3)
        if not _covariance_given("angular_velocity", sample.angular_velocity_covariance):
            raise EncoderInputError("IMU gives no angular velocity (its covariance[0] is -1): no turn can be read")
        if not _covariance_given("linear_acceleration", sample.linear_acceleration_covariance):
            raise EncoderInputError("IMU gives no linear acceleration (its covariance[0] is -1)")
        forward = ax
        orientation = _orientation(sample)
        if orientation is not None:
            qx, qy, qz, qw = orientation
            norm2 = qx * qx + qy * qy + qz * qz + qw * qw
            # x of gravity's reaction seen in the body frame: g times row 3, column 1 of the rotation matrix.
            forward = ax - STANDARD_GRAVITY * 2.0 * (qx * qz - qw * qy) / norm2
        encoded = self._accept_stamp("IMU", sample.stamp)
        self._count += 1
        self._sum_yaw_rate += wz
        self._sum_forward += forward
        force = math.sqrt(ax * ax + ay * ay + az * az)
        delta = force - self._force_mean
        self._force_mean += delta / self._count
        self._force_m2 += delta * (force - self._force_mean)
        return encoded

    def _close_window(self) -> tuple[int, tuple[float, ...]]:
        bins = self.bins
        yaw_rate, forward = self._sum_yaw_rate / self._count, self._sum_forward / self._count
        spread = math.sqrt(self._force_m2 / self._count)
        if abs(forward) >= bins.accel_threshold:
            push = 2 if forward > 0 else 3
        else:
            push = 1 if spread >= bins.vibration_std else 0
        return push * self._turn_count + bins.turn_index(yaw_rate), (yaw_rate, forward, spread)


def _vector(name: str, values: Sequence[float], size: int) -> tuple[float, ...]:
    if len(values) != size:
        raise EncoderInputError(f"IMU {name} has {len(values)} elements, expected {size}")
    floats = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in floats):
        raise EncoderInputError(f"IMU {name} holds a non-finite value: {floats}")
    return floats


def _covariance_given(name: str, covariance: Sequence[float]) -> bool:
    """Whether REP 145 says the field is given (element 0 is not -1); a covariance that is no 3x3 raises. The other
    elements are not used, so they are not checked."""
    if len(covariance) != 9:
        raise EncoderInputError(f"IMU {name}_covariance has {len(covariance)} elements, expected 9")
    return float(covariance[0]) != -1.0


def _orientation(sample: ImuSample) -> tuple[float, ...] | None:
    """The orientation quaternion when the IMU gives one; None when it says it does not (covariance[0] = -1) or
    gives no rotation: a raw IMU (``imu/data_raw``) publishes an all-zero quaternion with an all-zero covariance,
    and its angular velocity and acceleration are what the encoder reads anyway."""
    if not _covariance_given("orientation", sample.orientation_covariance) or len(sample.orientation) != 4:
        return None
    q = tuple(float(v) for v in sample.orientation)
    if not all(math.isfinite(v) for v in q) or sum(v * v for v in q) < 1e-12:
        return None
    return q
