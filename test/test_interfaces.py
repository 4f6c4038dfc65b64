"""Every edge_lam_msgs interface crosses between two real processes over Fast DDS with every field intact."""

from __future__ import annotations

import pathlib

import pytest
from ament_index_python.packages import get_package_share_directory

from conftest import finish

SHARE = pathlib.Path(get_package_share_directory("edge_lam_msgs"))
MESSAGES = sorted(f"edge_lam_msgs/msg/{p.stem}" for p in (SHARE / "msg").glob("*.msg"))
SERVICES = sorted(f"edge_lam_msgs/srv/{p.stem}" for p in (SHARE / "srv").glob("*.srv"))


def test_the_interfaces_the_design_names_are_installed():
    names = {name.rsplit("/", 1)[1] for name in MESSAGES + SERVICES}
    assert {
        "SemanticTokens", "Tensor", "TensorList", "ComputeAdvert", "ModuleAssignment", "PlacementPlan",
        "InferenceRequest", "InferenceResult", "LoadModule", "UnloadModule",
    } <= names


@pytest.mark.parametrize("type_name", MESSAGES)
def test_message_crosses_processes_intact(processes, type_name):
    topic = "/test_interfaces/" + type_name.rsplit("/", 1)[1].lower()
    receiver = processes.python("ros_peer.py", "receive", type_name, topic)
    publisher = processes.python("ros_peer.py", "publish", type_name, topic)
    receiver_rc, receiver_out = finish(receiver)
    publisher_rc, publisher_out = finish(publisher)
    outputs = f"receiver rc={receiver_rc}:\n{receiver_out}\npublisher rc={publisher_rc}:\n{publisher_out}"
    assert (receiver_rc, publisher_rc) == (0, 0), outputs


@pytest.mark.parametrize("type_name", SERVICES)
def test_service_call_crosses_processes_intact(processes, type_name):
    name = "/test_interfaces/" + type_name.rsplit("/", 1)[1].lower()
    server = processes.python("ros_peer.py", "serve", type_name, name)
    client = processes.python("ros_peer.py", "call", type_name, name)
    client_rc, client_out = finish(client)
    server_rc, server_out = finish(server)
    outputs = f"client rc={client_rc}:\n{client_out}\nserver rc={server_rc}:\n{server_out}"
    assert (client_rc, server_rc) == (0, 0), outputs


def test_the_field_check_catches_a_changed_nested_field():
    from message_samples import differences, interface_class, make_sample

    cls = interface_class("edge_lam_msgs/msg/SemanticTokens")
    sample, changed = make_sample(cls), make_sample(cls)
    data = bytearray(changed.embedding.data)
    data[-1] ^= 1
    changed.embedding.data = bytes(data)
    changed.header.stamp.nanosec += 1
    assert differences(sample, make_sample(cls)) == []
    assert [d.split(":")[0] for d in differences(sample, changed)] == ["header.stamp.nanosec", "embedding.data"]
