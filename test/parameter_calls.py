"""Setting a running node's parameters from the test process the way `ros2 param set` does: through the node's
``set_parameters`` service."""

from __future__ import annotations

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient

from ros_client import RosClient


def set_parameters(client: RosClient, node: str, timeout_s: float = 30.0, **values) -> list[SetParametersResult]:
    """Set ``values`` on the node named ``node`` (fully qualified); one result per value, in order."""
    parameters = AsyncParameterClient(client.node, node)
    assert parameters.wait_for_services(timeout_sec=timeout_s), f"{node} offers no parameter services"
    future = parameters.set_parameters([Parameter(name, value=value) for name, value in values.items()])
    assert client.spin_until(future.done, timeout_s), f"{node} did not answer set_parameters"
    return list(future.result().results)
