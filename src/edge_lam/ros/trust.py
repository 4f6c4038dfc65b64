"""A node's side of the signed control plane: the three parameters every node that sends or receives control
messages declares (``signing_key``, ``trusted_keys``, ``max_clock_skew_s``), signing what it sends, and checking,
logging (rate-limited) and counting what it receives. With ``trusted_keys`` empty, trust is off: the node says so
once, at start, and accepts everything as before."""

from __future__ import annotations

import time

from rclpy.node import Node

from edge_lam.ros.parameters import declare
from edge_lam.trust.checks import Stamper, Verdict, Verifier
from edge_lam.trust.keys import load_signing_key, load_trust_store
from edge_lam.wire.signing import sign, verify

__all__ = ["NodeTrust", "declare_trust"]

REFUSAL_LOG_PERIOD_S = 5.0  # a flood of forgeries gets a line per channel and reason this often; all are counted


class NodeTrust:
    """Signs with the node's key (if it has one) and verifies against the trust store (if trust is on)."""

    def __init__(self, node: Node, stamper: Stamper | None, verifier: Verifier | None,
                 parameters: dict[str, object]) -> None:
        self._node, self.stamper, self.verifier = node, stamper, verifier
        self.parameters = parameters  # as declared: a host agent hands them on to the shards it loads
        self._logged: dict[tuple[str, Verdict], float] = {}  # (channel, reason) -> time.monotonic() of its last line

    @property
    def on(self) -> bool:
        return self.verifier is not None

    @property
    def signer(self) -> str:
        return self.stamper.key.name if self.stamper is not None else ""

    def sign(self, msg):
        """``msg`` signed by the node's key (unchanged when it has none); returns it."""
        if self.stamper is not None:
            sign(msg, self.stamper, time.time_ns())
        return msg

    def refusal(self, msg, channel: str, identity: str | None = None, max_age: bool = True) -> str:
        """Empty when ``msg`` may be used (or trust is off); otherwise why not, logged and counted."""
        if self.verifier is None:
            return ""
        verdict = verify(msg, self.verifier, channel, time.time_ns(), identity, max_age)
        if verdict is Verdict.ACCEPTED:
            return ""
        signer = msg.signature.signer or "(none)"
        expected = f", expected '{identity}'" if verdict is Verdict.WRONG_IDENTITY else ""
        reason = f"{verdict.value} (signer '{signer}'{expected})"
        now = time.monotonic()
        if now - self._logged.get((channel, verdict), -REFUSAL_LOG_PERIOD_S) >= REFUSAL_LOG_PERIOD_S:
            self._logged[channel, verdict] = now
            self._node.get_logger().warning(f"ignored a message on {channel}: {reason}; "
                                            f"refused so far: {self.verifier.refused(channel)}")
        return reason

    def accept(self, msg, channel: str, identity: str | None = None, max_age: bool = True) -> bool:
        return not self.refusal(msg, channel, identity, max_age)

    def refused(self) -> dict[str, int]:
        """Refusals so far by reason, for diagnostics and adverts."""
        return self.verifier.refused() if self.verifier is not None else {}


def declare_trust(node: Node, what: str) -> NodeTrust:
    """Declare the trust parameters and load the keys; ``what`` completes "anyone on the domain can ..." in the
    warning of a node running with trust off. ValueError for a key that cannot be read, or trust on without a key
    of the node's own (whatever it sent would be refused)."""
    key_path = declare(node, "signing_key", "", "Path of this host's private key (NAME.key from `edge-lam keys make`; "
                       "NAME, the file stem, is the signer); empty: send unsigned.")
    store = declare(node, "trusted_keys", "", "Folder of the fleet's public keys (*.pub, named by signer); empty: "
                    "trust off, every message accepted unsigned (a warning at start).")
    skew = declare(node, "max_clock_skew_s", 10.0, "How far a signed stamp may be from this host's clock, s; "
                   "older or further ahead is refused as stale.")
    stamper = Stamper(load_signing_key(key_path)) if key_path else None
    parameters = {"signing_key": key_path, "trusted_keys": store, "max_clock_skew_s": skew}
    if not store:
        node.get_logger().warning(f"control plane not authenticated (trusted_keys is empty): anyone on the domain "
                                  f"can {what}")
        return NodeTrust(node, stamper, None, parameters)
    if stamper is None:
        raise ValueError("trusted_keys is set but signing_key is empty: this node's messages would be refused")
    if not skew > 0:
        raise ValueError(f"max_clock_skew_s {skew} must be > 0")
    verifier = Verifier(load_trust_store(store), skew)
    if not verifier.store.knows(stamper.key.name):
        node.get_logger().warning(f"this node signs as '{stamper.key.name}', which is not in {store}: a fleet with "
                                  "the same trust store refuses what it sends (copy its .pub there)")
    node.get_logger().info(f"control plane signed as '{stamper.key.name}'; trusting {sorted(verifier.store.keys)} "
                           f"(max clock skew {skew:g} s)")
    return NodeTrust(node, stamper, verifier, parameters)
