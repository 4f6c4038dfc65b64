"""Parameters are read once at start, so a later set must be refused rather than shown and ignored."""

import math

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


def test_a_live_parameter_takes_effect_at_once_and_refuses_values_out_of_range():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("parameters_live_probe", context=context)
        seen = []
        assert declare(node, "threshold", 0.8, "how sure", on_change=seen.append, low=0.0, high=1.0) == 0.8
        assert node.set_parameters([Parameter("threshold", value=0.5)])[0].successful
        assert seen == [0.5]
        refused = node.set_parameters([Parameter("threshold", value=1.5)])[0]
        assert not refused.successful and "range" in refused.reason
        refused = node.set_parameters([Parameter("threshold", value=float("nan"))])[0]
        assert not refused.successful
        assert seen == [0.5] and node.get_parameter("threshold").value == 0.5
        declare(node, "topic", "a", "a name", on_change=seen.append,
                check=lambda value: None if value else "must not be empty")
        assert not node.set_parameters([Parameter("topic", value="")])[0].successful
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_start_value_out_of_range_is_refused_with_the_parameter_named():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("parameters_range_probe", context=context,
                                 parameter_overrides=[Parameter("period_s", value=-1.0)])
        try:
            declare(node, "period_s", 1.0, "period", on_change=print, low=0.01)
        except Exception as err:  # rclpy refuses it by the descriptor's range
            assert "period_s" in str(err)
        else:
            raise AssertionError("a negative period was accepted")
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_read_only_parameter_may_be_nan_and_a_bounded_one_may_not():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("parameters_nan_probe", context=context)
        assert math.isnan(declare(node, "battery_fraction", float("nan"), "no battery"))
        declare(node, "gain", 1.0, "gain", on_change=print, low=0.0)
        assert not node.set_parameters([Parameter("gain", value=float("nan"))])[0].successful
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
