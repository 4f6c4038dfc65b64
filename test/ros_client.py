"""A node in the test process that publishes inputs to the nodes under test and collects what they publish."""

from __future__ import annotations

import rclpy
import rclpy.executors
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from edge_lam.ros.spin import spin_until

# What rcl offers on /rosout: reliable, transient-local (kept 10 s). Transient-local here too, so that a line a new
# process logs before this reader has matched its writer (discovery takes seconds under load) still comes.
ROSOUT = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class RosClient:
    def __init__(self, name: str, namespace: str = "") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type, topic: str, qos: QoSProfile) -> list:
        """Everything published on ``topic`` from now on, appended as it arrives while this client spins."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def collect_logs(self) -> list[Log]:
        """Every line any node logs from now on (/rosout), at the node's level: debug only from a node started
        with ``--log-level NAME:=debug``. What a test waits on to see that a node looked at something."""
        return self.collect(Log, "/rosout", ROSOUT)

    def publisher(self, msg_type, topic: str, qos: QoSProfile, timeout_s: float = 30.0):
        """A publisher that already has a subscriber, so the first message is not lost."""
        publisher = self.node.create_publisher(msg_type, topic, qos)
        assert self.spin_until(lambda: publisher.get_subscription_count() > 0, timeout_s), f"nobody subscribes {topic}"
        return publisher

    def spin_until(self, done, timeout_s: float = 30.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
