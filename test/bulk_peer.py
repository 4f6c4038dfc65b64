"""One side of a bulk transfer over ROS 2, run by test_hosts.py inside an emulated host.

    bulk_peer.py publish TOPIC COUNT SIZE    once a subscriber matches, publish COUNT sensor_msgs/Image of SIZE data
                                             bytes (reliable, keep-all), then wait until all are acknowledged
    bulk_peer.py receive TOPIC COUNT         wait for COUNT messages

Prints one `verdict: ok|timeout` line; exit status 0 ok, 2 time-out.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.duration import Duration
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from edge_lam.ros.spin import spin_until

TIMEOUT_S = 30.0
QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


def publish(node, topic: str, count: int, size: int) -> bool:
    publisher = node.create_publisher(Image, topic, QOS)
    if not spin_until(node, lambda: publisher.get_subscription_count() > 0, TIMEOUT_S):
        return False
    message = Image(data=bytes(size))
    for _ in range(count):
        publisher.publish(message)
    return publisher.wait_for_all_acked(Duration(seconds=TIMEOUT_S))


def receive(node, topic: str, count: int) -> bool:
    received = []
    node.create_subscription(Image, topic, received.append, QOS)
    print("ready", flush=True)
    return spin_until(node, lambda: len(received) >= count, TIMEOUT_S)


def main() -> int:
    mode, topic, count, *size = sys.argv[1:]
    with rclpy.init():
        node = rclpy.create_node(f"bulk_{mode}")
        done = publish(node, topic, int(count), int(size[0])) if mode == "publish" else receive(node, topic, int(count))
        print(f"verdict: {'ok' if done else 'timeout'}", flush=True)
    return 0 if done else 2


if __name__ == "__main__":
    sys.exit(main())
