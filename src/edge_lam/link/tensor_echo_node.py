"""Echoes TensorList messages back, so a peer can check a link end to end: bytes, latency and the DDS profile.

Run it on one host and send TensorList messages to ``ping`` from another; each comes back on ``pong`` with its
header untouched. With ``validate`` on, every tensor is decoded first and a malformed one is reported and dropped
instead of echoed.
"""

from __future__ import annotations

from edge_lam_msgs.msg import TensorList
from rclpy.node import Node

from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import TENSORS
from edge_lam.wire.tensors import TensorError, check


class TensorEchoNode(Node):
    """Republishes every TensorList received on ``ping`` to ``pong``."""

    def __init__(self, node_name: str = "tensor_echo", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._validate = declare(
            self, "validate", True, "Decode every tensor before echoing it; drop and log malformed ones."
        )
        self._rejected = 0
        self._pub = self.create_publisher(TensorList, "pong", TENSORS)
        self._sub = self.create_subscription(TensorList, "ping", self.echo, TENSORS)
        self.get_logger().info(
            f"echoing {self._sub.topic_name} -> {self._pub.topic_name} (validate={self._validate})"
        )

    def echo(self, msg: TensorList) -> None:
        if self._validate:
            try:
                for tensor in msg.tensors:
                    check(tensor)
            except TensorError as err:
                self._rejected += 1
                self.get_logger().error(f"dropped a TensorList ({self._rejected} so far): {err}")
                return
        self._pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    spin_node(TensorEchoNode, args)
