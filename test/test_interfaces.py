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


# The two peers of each kind of interface, as ros_peer.py names its modes: the one that waits, then the one that acts.
PEERS = {"msg": ("receive", "publish"), "srv": ("serve", "call"), "action": ("execute", "goal")}


@pytest.mark.parametrize("type_name", [*MESSAGES, *SERVICES, *ACTIONS])
def test_every_interface_crosses_processes_intact(processes, type_name):
    """A message published and received; a service request and response; an action goal, its feedback, a cancel
    and the result: each checked field by field by the receiving peer."""
    kind, name = type_name.split("/")[1:]
    waits, acts = PEERS[kind]
    waiting = processes.python("ros_peer.py", waits, type_name, f"/test_interfaces/{name.lower()}")
    acting = processes.python("ros_peer.py", acts, type_name, f"/test_interfaces/{name.lower()}")
    found, outputs = verdicts((acts, acting), (waits, waiting))
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
