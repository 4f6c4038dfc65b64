"""Motion and laser-scan encoder cores: tokens from a real Nav2 TurtleBot bag, hand-checkable scans, bad inputs."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest

from conftest import REPORTED
from edge_lam.assets import evo_bags_dir
from edge_lam.encoders.motion import (
    STANDARD_GRAVITY,
    ImuMotionEncoder,
    ImuSample,
    MotionBins,
    OdometryMotionEncoder,
    OdometrySample,
    yaw_from_quaternion,
)
from edge_lam.encoders.scan import ScanBins, ScanEncoder
from edge_lam.encoders.tokens import EncoderInputError

BINS = MotionBins()
# A window may disagree with its check only when the checked value lies this close to a bucket edge.
SPEED_MARGIN, YAW_RATE_MARGIN, ACCEL_MARGIN = 0.03, 0.05, 0.05  # m/s, rad/s, m/s^2
MAX_DISAGREEMENT = 0.05  # of all windows


@dataclasses.dataclass(frozen=True)
class Odometry:
    """/odom of nav2_turtlebot.mcap as columns."""

    stamp: np.ndarray
    x: np.ndarray
    y: np.ndarray
    quaternion: np.ndarray  # [n, 4] x, y, z, w
    speed: np.ndarray
    yaw_rate: np.ndarray

    def samples(self, with_twist: bool = True) -> list[OdometrySample]:
        return [
            OdometrySample(
                stamp=float(self.stamp[i]),
                x=float(self.x[i]),
                y=float(self.y[i]),
                yaw=yaw_from_quaternion(*self.quaternion[i]),
                linear_x=float(self.speed[i]) if with_twist else 0.0,
                angular_z=float(self.yaw_rate[i]) if with_twist else 0.0,
            )
            for i in range(self.stamp.size)
        ]


@pytest.fixture(scope="module")
def odometry() -> Odometry:
    return read_odometry()


def read_odometry() -> Odometry:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    rows = []
    with AnyReader([evo_bags_dir() / "nav2_turtlebot.mcap"], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
        connections = [c for c in r.connections if c.topic == "/odom"]
        for connection, _, raw in r.messages(connections=connections):
            m = r.deserialize(raw, connection.msgtype)
            p, q, t = m.pose.pose.position, m.pose.pose.orientation, m.twist.twist
            stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            rows.append((stamp, p.x, p.y, q.x, q.y, q.z, q.w, t.linear.x, t.angular.z))
    a = np.array(rows)
    return Odometry(a[:, 0], a[:, 1], a[:, 2], a[:, 3:7], a[:, 7], a[:, 8])


def run(encoder, samples) -> list[tuple[str, tuple[float, float], np.ndarray]]:
    """(word, (first, last) stamp, embedding row) of every window the samples close."""
    out = []
    for sample in samples:
        encoded = encoder.add(sample)
        if encoded is not None:
            assert encoded.ids.shape == (1,)
            out.append((encoder.vocabulary.word(encoded.ids[0]), encoder.last_window, encoded.embedding[0]))
    return out


def near_edge(value: float, edges: tuple[float, ...], margin: float) -> bool:
    return any(abs(abs(value) - e) <= margin for e in edges)


def bucket(value: float, still: float, edge: float, positive: str, negative: str, zero: str) -> str:
    """The test's own reading of the default two-bucket bins."""
    if abs(value) < still:
        return zero
    return f"{positive if value > 0 else negative}-{'slow' if abs(value) < edge else 'fast'}"


def test_odometry_tokens_follow_the_motion_seen_in_the_poses(odometry):
    """Twist-based tokens per window against speed and yaw rate worked out from the poses alone."""
    windows = run(OdometryMotionEncoder(), odometry.samples())
    qx, qy, qz, qw = odometry.quaternion.T
    heading = np.unwrap(np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy**2 + qz**2)))
    checked, disagreements = collections.Counter(), []
    for word, (first, last), _ in windows:
        # Steps ending at the window's samples: from the sample before the window to its last one.
        i0, i1 = np.searchsorted(odometry.stamp, [first, last])
        start = max(i0 - 1, 0)
        mid = 0.5 * (heading[start:i1] + heading[start + 1 : i1 + 1])
        forward = np.diff(odometry.x[start : i1 + 1]) * np.cos(mid) + np.diff(odometry.y[start : i1 + 1]) * np.sin(mid)
        duration = odometry.stamp[i1] - odometry.stamp[start]
        speed, yaw_rate = forward.sum() / duration, (heading[i1] - heading[start]) / duration
        linear = bucket(speed, BINS.still_speed, BINS.speed_edges[0], "forward", "reverse", "still")
        turn = bucket(yaw_rate, BINS.still_yaw_rate, BINS.yaw_rate_edges[0], "left", "right", "none")
        checked[linear.split("-")[0]] += 1
        checked[turn.split("-")[0]] += 1
        if word != f"{linear} {turn}":
            disagreements.append((word, f"{linear} {turn}", speed, yaw_rate))
            got_linear, got_turn = word.split()
            if got_linear != linear:
                assert near_edge(speed, (BINS.still_speed, *BINS.speed_edges), SPEED_MARGIN), disagreements[-1]
            if got_turn != turn:
                assert near_edge(yaw_rate, (BINS.still_yaw_rate, *BINS.yaw_rate_edges), YAW_RATE_MARGIN)
    # 97 s of driving in 0.5 s windows, less the ones a 1.8 s gap in the bag swallows.
    assert 180 <= len(windows) <= 195
    assert len(disagreements) <= MAX_DISAGREEMENT * len(windows), disagreements
    # The bag is a meaningful check only if the poses show the robot doing several different things.
    for motion in ("forward", "still", "left", "right", "none"):
        assert checked[motion] >= 3, checked
    assert len({word for word, _, _ in windows}) >= 6
    REPORTED.append(
        f"odometry motion tokens: {len(windows)} windows of nav2_turtlebot.mcap, "
        f"{1 - len(disagreements) / len(windows):.1%} agree with the poses"
    )


def test_odometry_without_twist_is_read_from_the_pose_path(odometry):
    with_twist = run(OdometryMotionEncoder(), odometry.samples())
    from_poses = run(OdometryMotionEncoder(), odometry.samples(with_twist=False))
    assert [w for _, w, _ in with_twist] == [w for _, w, _ in from_poses]
    differ = [(a, b, e) for (a, _, _), (b, _, e) in zip(with_twist, from_poses, strict=True) if a != b]
    assert len(differ) <= MAX_DISAGREEMENT * len(with_twist), differ
    for _, _, (speed, yaw_rate) in differ:
        assert near_edge(speed, (BINS.still_speed, *BINS.speed_edges), SPEED_MARGIN) or near_edge(
            yaw_rate, (BINS.still_yaw_rate, *BINS.yaw_rate_edges), YAW_RATE_MARGIN
        )
    assert sum(w.startswith("forward") for w, _, _ in from_poses) > 100


def imu_from_odometry(odometry: Odometry) -> list[ImuSample]:
    """What a level IMU on the TurtleBot would have measured, built from the odometry twist (the bags hold no IMU).

    Yaw rate is the twist's; forward acceleration the change of its speed; sideways the centripetal v * w;
    upwards gravity's reaction; orientation the odometry heading.
    """
    speed, stamp = odometry.speed, odometry.stamp
    accel = np.diff(speed, prepend=speed[0]) / np.diff(stamp, prepend=stamp[0] - 1.0)  # 0 for the first sample
    return [
        ImuSample(
            stamp=float(odometry.stamp[i]),
            angular_velocity=(0.0, 0.0, float(odometry.yaw_rate[i])),
            linear_acceleration=(accel[i], odometry.speed[i] * odometry.yaw_rate[i], STANDARD_GRAVITY),
            orientation=tuple(odometry.quaternion[i]),
            orientation_covariance=(0.0,) * 9,
        )
        for i in range(odometry.stamp.size)
    ]


def test_imu_tokens_from_the_bag_motion(odometry):
    odometry_windows = run(OdometryMotionEncoder(), odometry.samples())
    imu_windows = run(ImuMotionEncoder(), imu_from_odometry(odometry))
    assert [w for _, w, _ in imu_windows] == [w for _, w, _ in odometry_windows]
    # The gyro measures the same yaw rate as the odometry twist: the turn words agree window by window.
    assert [w.split()[1] for w, _, _ in imu_windows] == [w.split()[1] for w, _, _ in odometry_windows]
    pushes, disagreements = collections.Counter(), []
    for word, (first, last), _ in imu_windows:
        # The speed's change across the window (not from the sample before it: the bag has a 1.8 s gap).
        i0, i1 = np.searchsorted(odometry.stamp, [first, last])
        if i1 - i0 < 2:  # the window the gap cut short: too few samples to check against
            pushes["too short"] += 1
            continue
        accel = (odometry.speed[i1] - odometry.speed[i0]) / (odometry.stamp[i1] - odometry.stamp[i0])
        expected = "accel-forward" if accel > 0 else "accel-backward"
        expected = "steady" if abs(accel) < BINS.accel_threshold else expected
        pushes[expected] += 1
        if word.split()[0] != expected:
            disagreements.append((word, expected, accel))
            assert abs(abs(accel) - BINS.accel_threshold) <= ACCEL_MARGIN, disagreements[-1]
    assert len(disagreements) <= MAX_DISAGREEMENT * len(imu_windows)
    assert pushes["accel-forward"] >= 1 and pushes["accel-backward"] >= 1 and pushes["steady"] > 100, pushes
    assert pushes["too short"] <= 1, pushes


def imu_window(rng, seconds=1.0, rate=100.0, yaw_rate=0.0, forward=0.0, noise=0.02, pitch=0.0, orientation=True):
    """A hand-made IMU stream: constant yaw rate and forward acceleration, pitched nose-down by ``pitch`` rad."""
    gravity = STANDARD_GRAVITY * np.array([-math.sin(pitch), 0.0, math.cos(pitch)])
    quaternion = (0.0, math.sin(pitch / 2), 0.0, math.cos(pitch / 2))
    samples = []
    for i in range(int(seconds * rate) + 1):
        accel = gravity + np.array([forward, 0.0, 0.0]) + rng.normal(0.0, noise, 3)
        samples.append(
            ImuSample(
                stamp=100.0 + i / rate,
                angular_velocity=(0.0, 0.0, yaw_rate + rng.normal(0.0, 0.005)),
                linear_acceleration=tuple(accel),
                orientation=quaternion,
                orientation_covariance=(0.0,) * 9 if orientation else (-1.0,) + (0.0,) * 8,
            )
        )
    return samples


@pytest.mark.parametrize(
    ("stream", "word"),
    [
        ({}, "steady none"),
        ({"noise": 1.0}, "vibrating none"),
        ({"yaw_rate": 0.3}, "steady left-slow"),
        ({"yaw_rate": -0.8}, "steady right-fast"),
        ({"forward": 1.0}, "accel-forward none"),
        ({"forward": -0.6, "yaw_rate": 0.2}, "accel-backward left-slow"),
        ({"pitch": math.radians(10)}, "steady none"),  # gravity removed with the given orientation
        ({"pitch": math.radians(10), "orientation": False}, "accel-backward none"),  # level assumed: tilt reads as push
    ],
)
def test_imu_tokens_of_hand_made_motions(stream, word):
    windows = run(ImuMotionEncoder(), imu_window(np.random.default_rng(7), **stream))
    assert [w for w, _, _ in windows] == [word, word]  # 1 s at 100 Hz: two windows


def test_vocabularies_spell_out_every_combination():
    odometry, imu, scan = OdometryMotionEncoder().vocabulary, ImuMotionEncoder().vocabulary, ScanEncoder().vocabulary
    assert len(odometry.words) == 25 and odometry.words[0] == "still none"
    assert {"forward-slow left-fast", "reverse-fast right-slow", "still right-slow"} <= set(odometry.words)
    assert len(imu.words) == 20 and "accel-backward left-fast" in imu.words
    assert not any(w.startswith(("forward", "reverse")) for w in imu.words)  # an IMU can't tell them apart
    assert len(scan.words) == 48 and {"front 0.3-0.6m", "back-right clear", "left unseen", "right <0.3m"} <= set(
        scan.words
    )
    custom = OdometryMotionEncoder(MotionBins(speed_edges=(0.1, 0.3), speed_names=("crawl", "walk", "run")))
    assert len(custom.vocabulary.words) == 35 and "reverse-crawl none" in custom.vocabulary.words
    for vocabulary in (odometry, imu, scan, custom.vocabulary):
        assert len(set(vocabulary.words)) == len(vocabulary.words)


@pytest.mark.parametrize(
    "change",
    [
        {"window_s": 0.0},
        {"still_speed": -0.1},
        {"speed_edges": (0.3, 0.2), "speed_names": ("a", "b", "c")},
        {"speed_edges": (0.01,)},  # below still_speed
        {"yaw_rate_names": ("slow",)},
        {"accel_threshold": math.nan},
    ],
)
def test_bad_motion_bins_are_refused(change):
    with pytest.raises(ValueError):
        MotionBins(**change)


def good_odometry(count: int) -> list[OdometrySample]:
    """Driving forward at 0.3 m/s while turning right at 0.2 rad/s, sampled at 20 Hz."""
    return [OdometrySample(i * 0.05, 0.3 * i * 0.05, 0.0, -0.01 * i, 0.3, -0.2) for i in range(count)]


def good_imu(count: int) -> list[ImuSample]:
    return [ImuSample(i * 0.01, (0.0, 0.0, 0.6), (0.5, 0.0, STANDARD_GRAVITY)) for i in range(count)]


BAD_ODOMETRY = [
    (OdometrySample(0.62, math.nan, 0.0, 0.0, 0.3, -0.2), "x is nan"),
    (OdometrySample(0.62, 0.0, 0.0, 0.0, math.inf, -0.2), "linear_x is inf"),
    (OdometrySample(math.inf, 0.0, 0.0, 0.0, 0.3, -0.2), "stamp is inf"),
    (OdometrySample(0.60, 0.0, 0.0, 0.0, 0.3, -0.2), "not after"),  # duplicate of the last accepted stamp
    (OdometrySample(0.10, 0.0, 0.0, 0.0, 0.3, -0.2), "not after"),
]
BAD_IMU = [
    (ImuSample(0.305, (0.0, math.nan, 0.6), (0.5, 0.0, 9.8)), "angular_velocity holds a non-finite"),
    (ImuSample(0.305, (0.0, 0.6), (0.5, 0.0, 9.8)), "angular_velocity has 2 elements"),
    (ImuSample(0.305, (0.0, 0.0, 0.6), (0.5, 0.0, 9.8), orientation_covariance=(0.0,) * 8), "has 8 elements"),
    (ImuSample(0.305, (0.0, 0.0, 0.6), (0.5, 0.0, 9.8), angular_velocity_covariance=(-1.0,) * 9), "no angular"),
    (ImuSample(0.305, (0.0, 0.0, 0.6), (0.5, 0.0, 9.8), linear_acceleration_covariance=(-1.0,) * 9), "no linear"),
    (ImuSample(0.300, (0.0, 0.0, 0.6), (0.5, 0.0, 9.8)), "not after"),
]


@pytest.mark.parametrize(
    ("make_encoder", "good", "bad", "message"),
    [(OdometryMotionEncoder, good_odometry(13), *case) for case in BAD_ODOMETRY]
    + [(ImuMotionEncoder, good_imu(31), *case) for case in BAD_IMU],
)
def test_a_rejected_sample_changes_nothing(make_encoder, good, bad, message):
    """A bad sample in the middle of an open window: the window still holds every good sample before it."""
    encoder = make_encoder()
    before = run(encoder, good)
    with pytest.raises(EncoderInputError, match=message):
        encoder.add(bad)
    closing = dataclasses.replace(good[-1], stamp=good[-1].stamp + 0.7)  # past the open window: closes it
    after = run(encoder, [closing])
    reference = run(make_encoder(), [*good, closing])
    assert len(after) == 1 and after[0][1][1] == good[-1].stamp
    assert [(w, span, e.tolist()) for w, span, e in before + after] == [
        (w, span, e.tolist()) for w, span, e in reference
    ]


def test_a_raw_imu_without_orientation_gives_the_tokens_of_one_that_says_so():
    """Real data: drivers publish imu/data_raw with an all-zero quaternion and all-zero covariances (not -1); the
    encoder reads only angular velocity and acceleration, so it must not refuse those samples."""
    rng = np.random.default_rng(7)
    declared = imu_window(rng, seconds=2.0, yaw_rate=0.8, forward=0.5, orientation=False)
    raw = [dataclasses.replace(s, orientation=(0.0,) * 4, orientation_covariance=(0.0,) * 9,
                               angular_velocity_covariance=(0.0,) * 9, linear_acceleration_covariance=(0.0,) * 9)
           for s in declared]
    nan_orientation = [dataclasses.replace(s, orientation=(math.nan,) * 4) for s in raw]
    expected = [(w, span, e.tolist()) for w, span, e in run(ImuMotionEncoder(), declared)]
    assert len(expected) >= 3
    for samples in (raw, nan_orientation):
        assert [(w, span, e.tolist()) for w, span, e in run(ImuMotionEncoder(), samples)] == expected


def test_yaw_from_quaternion_ignores_length_and_refuses_zero():
    assert yaw_from_quaternion(0.0, 0.0, math.sin(0.4), math.cos(0.4)) == pytest.approx(0.8)
    assert yaw_from_quaternion(0.0, 0.0, 3 * math.sin(-1.2), 3 * math.cos(-1.2)) == pytest.approx(-2.4)
    with pytest.raises(EncoderInputError, match="zero length"):
        yaw_from_quaternion(0.0, 0.0, 0.0, 0.0)


def test_reset_accepts_a_clock_that_jumped_back():
    encoder = OdometryMotionEncoder()
    run(encoder, good_odometry(30))
    with pytest.raises(EncoderInputError):
        encoder.add(good_odometry(1)[0])
    encoder.reset()
    assert encoder.last_window is None
    assert [w for w, _, _ in run(encoder, good_odometry(30))] == ["forward-fast right-slow"] * 2


def full_scan(count: int = 360, start: float = -math.pi) -> dict:
    """A 360-ray scan with nothing in sight, as a TurtleBot's LDS publishes it (angle_max is the last ray's angle)."""
    increment = 2 * math.pi / count
    return {
        "angle_min": start,
        "angle_max": start + (count - 1) * increment,
        "angle_increment": increment,
        "range_min": 0.12,
        "range_max": 3.5,
        "ranges": np.full(count, np.inf, dtype=np.float32),
    }


def words(encoder: ScanEncoder, scan: dict) -> dict[str, str]:
    encoded = encoder.encode(**scan)
    assert encoded.shape == (encoder.bins.sectors,) and encoded.scores.shape == encoded.ids.shape
    return dict(word.split(" ", 1) for word in encoder.vocabulary.describe(encoded.ids))


def test_an_obstacle_half_a_metre_ahead():
    scan = full_scan()
    scan["ranges"][180] = 0.5  # the ray at angle 0
    scan["ranges"][181] = 0.55
    encoded = ScanEncoder().encode(**scan)
    assert words(ScanEncoder(), scan) == {
        "front": "0.3-0.6m",
        **{s: "clear" for s in ("front-left", "left", "back-left", "back", "back-right", "right", "front-right")},
    }
    assert encoded.scores[0] == pytest.approx(0.5) and np.isinf(encoded.scores[1:]).all()


def test_a_distance_on_a_bucket_edge_belongs_to_the_bucket_above():
    scan = full_scan()
    scan["ranges"][225] = 0.3  # +45 deg
    scan["ranges"][270] = 2.5  # +90 deg
    encoded = ScanEncoder().encode(**scan)
    got = words(ScanEncoder(), scan)
    assert (got["front-left"], got["left"]) == ("0.3-0.6m", "clear")
    assert encoded.scores[2] == np.float32(2.5)  # a return past the last edge still scores its distance


def test_nothing_in_sight_is_clear_everywhere():
    scan = full_scan()
    scan["ranges"][:100] = np.nan
    scan["ranges"][100:200] = 0.05  # below range_min: no return
    scan["ranges"][200:300] = 3.6  # beyond range_max
    scan["ranges"][300:310] = 3.0  # a return, but past the last edge
    assert set(words(ScanEncoder(), scan).values()) == {"clear"}


def test_the_back_sector_wraps_across_pi_and_scans_may_start_anywhere():
    scan = full_scan()
    scan["ranges"][0] = 1.0  # -180 deg
    scan["ranges"][359] = 0.25  # +179 deg
    scan["ranges"][90] = 2.0  # -90 deg
    assert words(ScanEncoder(), scan)["back"] == "<0.3m"
    assert words(ScanEncoder(), scan)["right"] == "1.2-2.5m"
    lds = full_scan(start=0.0)  # 0..2pi, as the TurtleBot3 LDS scans
    lds["ranges"][350] = 0.7  # -10 deg: front, across the scan's end
    lds["ranges"][200] = 0.2  # 200 deg = -160 deg: back
    got = words(ScanEncoder(), lds)
    assert (got["front"], got["back"], got["front-right"]) == ("0.6-1.2m", "<0.3m", "clear")


def test_a_narrow_scanner_leaves_the_back_unseen():
    count = 181
    increment = math.pi / (count - 1)
    ranges = np.full(count, 2.0, dtype=np.float32)
    scan = {
        "angle_min": -math.pi / 2,
        "angle_max": math.pi / 2,
        "angle_increment": increment,
        "range_min": 0.1,
        "range_max": 10.0,
        "ranges": ranges,
        "intensities": np.ones(count),
    }
    encoded = ScanEncoder().encode(**scan)
    got = words(ScanEncoder(), scan)
    assert {s for s, w in got.items() if w == "unseen"} == {"back-left", "back", "back-right"}
    assert got["left"] == got["right"] == got["front"] == "1.2-2.5m"
    assert np.isnan(encoded.scores[3:6]).all() and encoded.scores[0] == 2.0


def test_reversed_scanners_counted_clockwise_or_mounted_backwards():
    clockwise = full_scan()
    clockwise["angle_min"], clockwise["angle_max"] = math.pi, -math.pi + 2 * math.pi / 360
    clockwise["angle_increment"] *= -1
    clockwise["ranges"][90] = 0.4  # pi - 90 * 1 deg = +90 deg
    assert words(ScanEncoder(), clockwise)["left"] == "0.3-0.6m"
    ahead = full_scan()
    ahead["ranges"][180] = 0.4
    assert words(ScanEncoder(ScanBins(mount_yaw=math.pi)), ahead)["back"] == "0.3-0.6m"
    four = ScanEncoder(ScanBins(sectors=4, distance_edges=(1.0,)))
    assert words(four, ahead) == {"front": "<1m", "left": "clear", "back": "clear", "right": "clear"}


def test_a_changed_scan_layout_is_not_read_with_the_old_one():
    encoder = ScanEncoder()
    wide = full_scan()
    wide["ranges"][180] = 0.5
    assert words(encoder, wide)["front"] == "0.3-0.6m"
    shifted = full_scan(start=0.0)
    shifted["ranges"][180] = 0.5  # 180 deg now
    got = words(encoder, shifted)
    assert (got["front"], got["back"]) == ("clear", "0.3-0.6m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ranges": np.full(300, 1.0)}, "300 ranges"),
        ({"ranges": np.full(363, 1.0)}, "363 ranges"),
        ({"ranges": np.zeros(0)}, "non-empty"),
        ({"intensities": np.ones(359)}, "359 intensities"),
        ({"angle_increment": 0.0}, "angle_increment is 0"),
        ({"angle_min": math.nan}, "angle_min is nan"),
        ({"range_max": math.inf}, "range_max is inf"),
        ({"range_min": 4.0}, "range_min < range_max"),
    ],
)
def test_a_bad_scan_is_refused_and_the_next_one_read(change, message):
    encoder = ScanEncoder()
    with pytest.raises(EncoderInputError, match=message):
        encoder.encode(**{**full_scan(), **change})
    scan = full_scan()
    scan["ranges"][180] = 0.5
    assert words(encoder, scan)["front"] == "0.3-0.6m"
    scan = full_scan()  # 361 ranges: one past the angles, as some drivers count
    scan["ranges"] = np.append(scan["ranges"], np.float32(np.inf))
    assert set(words(encoder, scan).values()) == {"clear"}
