"""Link probes between host agents and their replies, as TensorLists: the header names the sender (frame_id) and
the time the probe was sent (stamp, which the reply echoes and which identifies the probe); the one tensor is named
after the addressee and carries the probe's bytes (none in a reply). With trust on, an agent signs both (the
TensorList's ``signature``) and takes a probe only signed by its sender, a reply only by the probed host."""

from __future__ import annotations

import dataclasses

from edge_lam_msgs.msg import Tensor, TensorList

from edge_lam.wire.stamps import from_ns, to_ns

__all__ = ["Probe", "from_probe_msg", "to_probe_msg"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """A probe (or a reply) from ``sender`` to ``addressee``, sent at ``sent_ns`` by the prober's clock."""

    addressee: str
    sender: str
    sent_ns: int
    nbytes: int = 0

    def reply(self) -> Probe:
        """The reply: small, back to the sender, with the probe's stamp."""
        return Probe(self.sender, self.addressee, self.sent_ns)


def to_probe_msg(probe: Probe) -> TensorList:
    msg = TensorList(tensors=[Tensor(name=probe.addressee, dtype="uint8", shape=[probe.nbytes],
                                     data=bytes(probe.nbytes))])
    msg.header.stamp, msg.header.frame_id = from_ns(probe.sent_ns), probe.sender
    return msg


def from_probe_msg(msg: TensorList) -> Probe | None:
    """The probe a TensorList carries; None for one with no tensor (nobody's probe)."""
    if not msg.tensors:
        return None
    return Probe(msg.tensors[0].name, msg.header.frame_id, to_ns(msg.header.stamp), len(msg.tensors[0].data))
