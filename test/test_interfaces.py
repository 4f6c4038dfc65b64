"""Every edge_lam_msgs interface (messages, services, actions) crosses between two real processes over Fast DDS with
every field intact."""

from __future__ import annotations

import pathlib

import pytest
from ament_index_python.packages import get_package_share_directory

from conftest import REPORTED, finish

SHARE = pathlib.Path(get_package_share_directory("edge_lam_msgs"))
MESSAGES = sorted(f"edge_lam_msgs/msg/{p.stem}" for p in (SHARE / "msg").glob("*.msg"))
SERVICES = sorted(f"edge_lam_msgs/srv/{p.stem}" for p in (SHARE / "srv").glob("*.srv"))
ACTIONS = sorted(f"edge_lam_msgs/action/{p.stem}" for p in (SHARE / "action").glob("*.action"))


def test_the_interfaces_the_design_names_are_installed():
    names = {name.rsplit("/", 1)[1] for name in MESSAGES + SERVICES}
    assert [name.rsplit("/", 1)[1] for name in ACTIONS] == ["Generate"]
    assert {
        "SemanticTokens", "Tensor", "TensorList", "ComputeAdvert", "ModuleAssignment", "PlacementPlan",
        "InferenceRequest", "InferenceResult", "LoadModule", "UnloadModule",
    } <= names


def verdicts(*peers) -> tuple[tuple[str, ...], str]:
    """Each peer's verdict line and all their output; a teardown that hung after its verdict is reported, not failed."""
    found, outputs = [], []
    for label, process in peers:
        rc, output = finish(process)
        verdict = next((line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("verdict: ")), None)
        if verdict == "ok" and rc != 0:
            REPORTED.append(f"{label} peer hung in Fast DDS teardown after its verdict (eProsima/Fast-DDS#6502)")
        found.append(verdict if verdict else f"no verdict, rc={rc}")
        outputs.append(f"{label} rc={rc}:\n{output}")
    return tuple(found), "\n".join(outputs)


@pytest.mark.parametrize("type_name", MESSAGES)
def test_message_crosses_processes_intact(processes, type_name):
    topic = "/test_interfaces/" + type_name.rsplit("/", 1)[1].lower()
    receiver = processes.python("ros_peer.py", "receive", type_name, topic)
    publisher = processes.python("ros_peer.py", "publish", type_name, topic)
    found, outputs = verdicts(("receiver", receiver), ("publisher", publisher))
    assert found == ("ok", "ok"), outputs


@pytest.mark.parametrize("type_name", SERVICES)
def test_service_call_crosses_processes_intact(processes, type_name):
    name = "/test_interfaces/" + type_name.rsplit("/", 1)[1].lower()
    server = processes.python("ros_peer.py", "serve", type_name, name)
    client = processes.python("ros_peer.py", "call", type_name, name)
    found, outputs = verdicts(("client", client), ("server", server))
    assert found == ("ok", "ok"), outputs


@pytest.mark.parametrize("type_name", ACTIONS)
def test_action_goal_feedback_cancel_and_result_cross_processes_intact(processes, type_name):
    name = "/test_interfaces/" + type_name.rsplit("/", 1)[1].lower()
    server = processes.python("ros_peer.py", "execute", type_name, name)
    client = processes.python("ros_peer.py", "goal", type_name, name)
    found, outputs = verdicts(("client", client), ("server", server))
    assert found == ("ok", "ok"), outputs


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
