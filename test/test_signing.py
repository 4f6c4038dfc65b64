"""wire/signing on real generated messages of every signed type: a signature round-trips through serialization,
and a change to any field, the signer or the stamp breaks it."""

from __future__ import annotations

import pytest
from edge_lam_msgs.msg import ChainPacket, ComputeAdvert, PlacementPlan, TensorList
from edge_lam_msgs.srv import LoadModule, UnloadModule
from rclpy.serialization import deserialize_message, serialize_message

from edge_lam.trust.checks import Stamper, Verdict, Verifier
from edge_lam.trust.keys import load_signing_key, load_trust_store, make_keys
from edge_lam.wire.signing import sign, verify
from message_samples import make_sample

NOW = 1_800_000_000 * 10**9
SIGNED_TYPES = [ComputeAdvert, PlacementPlan, ChainPacket, TensorList, LoadModule.Request, UnloadModule.Request]


@pytest.fixture
def keys(tmp_path):
    make_keys(tmp_path, ["edge"])
    return Stamper(load_signing_key(tmp_path / "edge.key")), load_trust_store(tmp_path)


def touch_a_string(msg) -> bool:
    """Change the first string field of ``msg`` or of a message inside it (not the signature's)."""
    for field, field_type in msg.get_fields_and_field_types().items():
        value = getattr(msg, field)
        if field_type == "string":
            setattr(msg, field, value + "x")
            return True
        if field != "signature" and hasattr(value, "get_fields_and_field_types") and touch_a_string(value):
            return True
    return False


@pytest.mark.parametrize("msg_type", SIGNED_TYPES, ids=lambda t: t.__name__)
def test_a_signed_message_verifies_after_the_wire_and_not_after_any_change(msg_type, keys):
    stamper, store = keys
    msg = sign(make_sample(msg_type), stamper, NOW)
    assert msg.signature.signer == "edge" and msg.signature.stamp_ns == NOW and len(msg.signature.signature) == 64
    received = deserialize_message(serialize_message(msg), msg_type)
    assert verify(received, Verifier(store, 5.0), "ch", NOW) is Verdict.ACCEPTED

    changes = {"stamp": lambda m: setattr(m.signature, "stamp_ns", NOW + 1),
               "signer": lambda m: setattr(m.signature, "signer", "robot")}
    changes["a string field"] = touch_a_string
    for what, change in changes.items():
        forged = deserialize_message(serialize_message(msg), msg_type)
        change(forged)
        verdict = verify(forged, Verifier(store, 5.0), "ch", NOW)
        assert verdict in (Verdict.BAD_SIGNATURE, Verdict.UNKNOWN_SIGNER), (what, verdict)


def test_an_unsigned_message_is_told_apart_and_signing_leaves_the_payload_alone(keys):
    stamper, store = keys
    plan = make_sample(PlacementPlan)
    plan.signature.signer, plan.signature.signature = "", b""
    assert verify(plan, Verifier(store, 5.0), "plan", NOW) is Verdict.UNSIGNED
    before = make_sample(TensorList)
    signed = sign(make_sample(TensorList), stamper, NOW)
    assert bytes(signed.tensors[0].data) == bytes(before.tensors[0].data)
