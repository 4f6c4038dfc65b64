"""The tensor_echo executable, started the `ros2 run` way, returns tensors byte for byte and refuses bad ones."""

from __future__ import annotations

import pathlib

import pytest
import torch
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import TensorList

from conftest import finish
from edge_lam.ros.qos import TENSORS
from edge_lam.wire.tensors import to_msg, to_torch
from ros_client import RosClient

EXECUTABLE = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam" / "tensor_echo"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8]


@pytest.fixture
def client():
    client = RosClient("test_tensor_echo")
    yield client
    client.close()


def tensor_list(*tensors: torch.Tensor, seq: int) -> TensorList:
    msg = TensorList()
    msg.header.frame_id = f"seq-{seq}"
    msg.tensors = [to_msg(t, f"t{i}") for i, t in enumerate(tensors)]
    return msg


def test_echo_round_trip_is_exact_and_malformed_input_is_dropped_with_a_log(client, processes):
    echo = processes.start(EXECUTABLE, "--ros-args", "-r", "ping:=/test_echo/ping", "-r", "pong:=/test_echo/pong")
    received: list[TensorList] = []
    subscription = client.node.create_subscription(TensorList, "/test_echo/pong", received.append, TENSORS)
    publisher = client.node.create_publisher(TensorList, "/test_echo/ping", TENSORS)
    assert client.spin_until(
        lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0
    ), "tensor_echo did not come up"

    generator = torch.Generator().manual_seed(0)
    sent = [(torch.randn(3, 7, 576, generator=generator) * 10).to(dtype) for dtype in DTYPES]
    sent.append(torch.randn(1024, 1024, generator=generator))  # 4 MB: larger than one shared-memory default segment
    publisher.publish(tensor_list(*sent, seq=0))

    bad = tensor_list(torch.zeros(4), seq=1)
    bad.tensors[0].data = bytes(15)  # 15 bytes for a float32 [4]
    publisher.publish(bad)
    publisher.publish(tensor_list(torch.ones(2, dtype=torch.bfloat16), seq=2))

    assert client.spin_until(lambda: len(received) >= 2), f"echo returned {len(received)} of 2 messages"
    assert [m.header.frame_id for m in received] == ["seq-0", "seq-2"]
    for original, echoed in zip(sent, received[0].tensors, strict=True):
        back = to_torch(echoed)
        assert back.dtype == original.dtype and back.shape == original.shape
        assert torch.equal(back.view(torch.uint8), original.contiguous().view(torch.uint8))

    processes.stop_all()
    _, log = finish(echo, timeout_s=10)
    assert "15 bytes for shape [4] of float32, expected 16" in log


def test_a_set_parameters_call_of_an_unknown_type_is_logged_and_the_node_goes_on(client, processes):
    """rclpy's own parameter service raises on a parameter type it does not know; that must end no process."""
    from rcl_interfaces.msg import Parameter, ParameterValue
    from rcl_interfaces.srv import SetParameters

    echo = processes.start(EXECUTABLE, "--ros-args", "-r", "__node:=echo_params", "-r", "ping:=/test_echo_p/ping",
                           "-r", "pong:=/test_echo_p/pong")
    logs = client.collect_logs()
    setter = client.node.create_client(SetParameters, "/echo_params/set_parameters")
    assert client.spin_until(setter.service_is_ready, 30), "tensor_echo did not come up"
    setter.call_async(SetParameters.Request(parameters=[Parameter(name="x", value=ParameterValue(type=255))]))
    assert client.spin_until(lambda: any("callback failed" in m.msg for m in logs), 30), "no log of the failure"
    assert echo.poll() is None, "the node ended"

    received: list[TensorList] = []
    client.node.create_subscription(TensorList, "/test_echo_p/pong", received.append, TENSORS)
    publisher = client.node.create_publisher(TensorList, "/test_echo_p/ping", TENSORS)
    assert client.spin_until(lambda: publisher.get_subscription_count() > 0)
    publisher.publish(tensor_list(torch.ones(3), seq=7))
    assert client.spin_until(lambda: bool(received)), "the node no longer echoes"
