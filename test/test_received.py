"""A node behind on its queue judges silence by when messages arrived, not by when it got round to them."""

import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from edge_lam.ros.qos import ADVERTS_READER
from edge_lam.ros.received import received_at
from edge_lam.ros.spin import spin_until


def test_a_message_taken_late_is_dated_when_it_arrived():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("received_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        dated: list[tuple[float, float]] = []  # (received_at, monotonic when the callback ran)
        node.create_subscription(String, "received_probe", lambda _, info: dated.append(
            (received_at(info), time.monotonic())), ADVERTS_READER)
        publisher = node.create_publisher(String, "received_probe", ADVERTS_READER)
        assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 10)
        sent = time.monotonic()
        publisher.publish(String(data="late"))
        time.sleep(0.5)  # the node does other work; the middleware has the message meanwhile
        assert spin_until(executor, lambda: dated, 10)
        (arrived, taken), = dated
        assert taken - sent >= 0.5
        assert sent - 0.05 <= arrived <= sent + 0.25, f"dated {arrived - sent:+.3f} s after it was sent"
        assert received_at({}) >= taken  # no stamp from the middleware: now
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
