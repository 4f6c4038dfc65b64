"""Parameters are read once at start, so a later set must be refused rather than shown and ignored."""

import rclpy
from rclpy.parameter import Parameter

from edge_lam.ros.parameters import declare


def test_a_declared_parameter_takes_its_start_value_and_refuses_a_later_set():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("parameters_probe", context=context,
                                 parameter_overrides=[Parameter("trusted_keys", value="/keys/fleet")])
        assert declare(node, "trusted_keys", "", "folder of trusted keys") == "/keys/fleet"
        result = node.set_parameters([Parameter("trusted_keys", value="")])[0]
        assert not result.successful and "read-only" in result.reason
        assert node.get_parameter("trusted_keys").value == "/keys/fleet"
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
