"""A fleet with trust on, in real processes (two host agents, the coordinator and the gateway, each with its host's
key): a participant on the domain without a fleet key publishes forged plans (unsigned and stamped a day ahead
with no assignments, signed by a key the fleet does not trust, signed in a trusted host's name with another key, a
genuine plan tampered with, a replay of the genuine plan), adverts of an invented host, forged hidden states into a
shard, on the chain's input in the gateway's place and forged tokens on the chain's output, and calls an agent's
load and unload services. Every forgery is ignored, logged and counted: the agents keep their shards, the chain keeps
answering as before, and the invented host gets nothing. Then one agent and a peer played by the test: forged link
probe replies (unsigned, by a fleet host that was not probed, a replay) do not change the link it advertises."""

from __future__ import annotations

import shutil
import time
import uuid

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import (
    ChainPacket,
    ComputeAdvert,
    InferenceRequest,
    InferenceResult,
    LinkEstimate,
    ModuleAssignment,
    PlacementPlan,
    TensorList,
)
from edge_lam_msgs.srv import LoadModule, UnloadModule
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message, serialize_message
from test_fleet import LIB, MODEL, answered, ask, hosts_of, tokens_of

from conftest import REPORTED
from edge_lam.ros.qos import ADVERTS, ADVERTS_READER, CONTROL, LATCHED, TENSORS
from edge_lam.trust.checks import Stamper
from edge_lam.trust.keys import SigningKey, load_signing_key, make_keys
from edge_lam.wire.probes import Probe, from_probe_msg, to_probe_msg
from edge_lam.wire.signing import sign
from edge_lam.wire.stamps import from_ns, to_ns
from edge_lam.wire.tensors import to_msg
from ros_client import RosClient

DAY_NS = 86400 * 10**9
FORGED_TOKEN = 42
HOSTS = {"robot": ("robot", 0.5, 320), "edge": ("edge", 1.0, 480)}  # as the demo: neither holds the whole model


@pytest.fixture
def keys(tmp_path):
    """Each host's private key in its own folder; the trust store holds only the .pub files (as copied between
    hosts); the intruder's key is in no store."""
    make_keys(tmp_path / "private", list(HOSTS))
    make_keys(tmp_path / "intruder", ["intruder"])
    store = tmp_path / "trusted"
    store.mkdir()
    for name in HOSTS:
        shutil.copy(tmp_path / "private" / f"{name}.pub", store)
    return tmp_path


def refused_counts(arrays: list[DiagnosticArray], agent: str) -> dict[str, int]:
    """The newest refusal counts an agent reports on /diagnostics."""
    for array in reversed(arrays):
        for status in array.status:
            if status.name == agent:
                return {v.key.removeprefix("refused "): int(v.value) for v in status.values
                        if v.key.startswith("refused ")}
    return {}


def test_a_participant_without_a_key_cannot_change_what_the_fleet_runs(processes, keys):
    ns = f"trust_{uuid.uuid4().hex[:8]}"
    adverts_topic, plan_topic = f"/{ns}/adverts", f"/{ns}/plan"
    trusted = ["-p", f"trusted_keys:={keys / 'trusted'}"]

    def ros_args(host: str, *params: str) -> list[str]:
        args = ["--ros-args", "-r", f"__ns:=/{ns}", "-p", f"adverts_topic:={adverts_topic}", "-p",
                f"plan_topic:={plan_topic}", "-p", f"model:={MODEL}", "-p",
                f"signing_key:={keys / 'private' / f'{host}.key'}", *trusted]
        for param in params:
            args += ["-p", param]
        return args

    client = RosClient("intruder", ns)
    plans = client.collect(PlacementPlan, plan_topic, LATCHED)
    adverts = client.collect(ComputeAdvert, adverts_topic, ADVERTS_READER)
    results = client.collect(InferenceResult, "results", CONTROL)
    diagnostics = client.collect(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
    logs = client.collect_logs()
    try:
        for host, (role, scale, mib) in HOSTS.items():
            processes.start(LIB / "host_agent", *ros_args(host, f"host_id:={host}", f"role:={role}",
                                                          f"compute_scale:={scale}",
                                                          f"memory_limit_bytes:={mib * 2**20}"),
                            "-r", f"__node:=agent_{host}")
        processes.start(LIB / "coordinator", *ros_args("edge", "settle_s:=2.0", "use_load:=false",
                                                       "gateway_host:=edge"))
        processes.start(LIB / "gateway", *ros_args("edge", "step_timeout_s:=5.0"))
        requests = client.publisher(InferenceRequest, "requests", CONTROL, timeout_s=60)
        assert client.spin_until(lambda: plans and hosts_of(plans[-1]) == set(HOSTS), 120), "no split plan"

        def hosting() -> dict[str, list[str]]:
            newest = {a.host_id: list(a.modules_hosted) for a in adverts[-10:]}
            return {h: newest.get(h, []) for h in HOSTS}

        def wanted_by(plan: PlacementPlan) -> dict[str, list[str]]:
            return {h: sorted(m.module_id for m in plan.modules if m.host_id == h) for h in HOSTS}

        # The hosts follow the newest plan: the coordinator may re-place the model once its first measurements of
        # the hosts come in (a loaded machine measures its compute differently from one second to the next).
        assert client.spin_until(lambda: hosts_of(plans[-1]) == set(HOSTS) and {
            h: sorted(m) for h, m in hosting().items()} == wanted_by(plans[-1]), 120), hosting()
        genuine = plans[-1]
        wanted = wanted_by(genuine)
        assert genuine.signature.signer == "edge" and len(genuine.signature.signature) == 64
        assert genuine.gateway_host == "edge"  # who may feed the chain's first module

        prompt = ["Name one sensor a mobile robot uses."]

        def answer() -> list[int]:
            """The chain's answer; retried while the gateway says the chain is not connected yet."""
            served: list[list[int]] = []
            errors: list[str] = []

            def one() -> bool:
                ids = ask(client, requests, results, prompt)
                assert client.spin_until(lambda: answered(results, ids), 120), "no answer"
                (final,) = answered(results, ids)
                if final.error_code == InferenceResult.ERROR_NONE:
                    served.append(tokens_of(results, final.request_id))
                errors.append(final.error_message)
                return bool(served)

            assert client.spin_until(one, 120), f"the chain did not answer: {errors[-3:]}"
            return served[0]

        before = answer()

        # -- forged plans -----------------------------------------------------------------------------------------
        forger = client.node.create_publisher(PlacementPlan, plan_topic, LATCHED)
        now = time.time_ns()
        intruder = Stamper(load_signing_key(keys / "intruder" / "intruder.key"))
        posing = Stamper(SigningKey("edge", intruder.key.key))  # the intruder's key under a trusted name

        def empty_plan(version: int) -> PlacementPlan:
            plan = PlacementPlan(plan_id=uuid.uuid4().hex, version=version, model_id=MODEL, solver="forged")
            plan.header.stamp = from_ns(now + DAY_NS)
            return plan

        tampered = deserialize_message(serialize_message(genuine), PlacementPlan)
        tampered.modules = []
        forgeries = {
            "unsigned, stamped a day ahead, no assignments": empty_plan(1),
            "signed by a key not in the store, a day ahead": sign(empty_plan(2), intruder, now + DAY_NS),
            "signed as 'edge' with another key": sign(empty_plan(3), posing, now),
            "the genuine plan with its assignments removed": tampered,
            "a replay of the genuine plan": deserialize_message(serialize_message(genuine), PlacementPlan),
        }
        for forgery in forgeries.values():
            forger.publish(forgery)
            client.spin_for(0.2)

        # -- adverts of an invented host, unsigned and signed by the intruder ---------------------------------------
        advertiser = client.node.create_publisher(ComputeAdvert, adverts_topic, ADVERTS)
        for i in range(15):
            advert = ComputeAdvert(host_id="invented", role=ComputeAdvert.ROLE_CLOUD, compute_gflops=1e6,
                                   memory_total_bytes=64 * 2**30, memory_free_bytes=64 * 2**30)
            advert.header.stamp = from_ns(time.time_ns())
            advertiser.publish(sign(advert, intruder, time.time_ns()) if i % 2 else advert)
            client.spin_for(0.2)

        # -- load and unload requests without a fleet key ---------------------------------------------------------
        load = client.node.create_client(LoadModule, f"/{ns}/agent_edge/load_module")
        unload = client.node.create_client(UnloadModule, f"/{ns}/agent_edge/unload_module")
        assert client.spin_until(lambda: load.service_is_ready() and unload.service_is_ready(), 30)
        calls = {
            "load_module, unsigned": load.call_async(LoadModule.Request(module=ModuleAssignment(
                module_id="edge_trainer", kind=ModuleAssignment.KIND_ENCODER),
                parameters_yaml="ledger_path: /tmp/owned")),
            "unload_module, signed by the intruder": unload.call_async(sign(
                UnloadModule.Request(module_id=wanted["edge"][0]), intruder, time.time_ns())),
        }
        assert client.spin_until(lambda: all(f.done() for f in calls.values()), 30)
        service_answers = {what: (f.result().success, f.result().message) for what, f in calls.items()}

        # -- a forged answer on the chain's output, for a request in flight -------------------------------------
        chain_output = client.node.create_publisher(ChainPacket, "chain/output", TENSORS)
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt[0])
        request.options.max_new_tokens = len(before)
        requests.publish(request)
        # ... unsigned, by the intruder, and by the fleet host that does not hold the head (trusted, wrong identity)
        head_host = [p for p in plans if p.solver != "forged" and p.modules][-1].modules[-1].host_id
        other_host = Stamper(load_signing_key(keys / "private" / f"{next(h for h in HOSTS if h != head_host)}.key"))
        for step in range(len(before)):
            forged = ChainPacket(request_id=request.request_id, step=step,
                                 tensors=[to_msg(np.asarray([FORGED_TOKEN], dtype=np.int64), "next_token")])
            signer = (None, intruder, other_host)[step % 3]
            chain_output.publish(sign(forged, signer, time.time_ns()) if signer else forged)
        assert client.spin_until(lambda: answered(results, {request.request_id: ""}), 120), "no answer"
        streamed = tokens_of(results, request.request_id)

        # -- hidden states into the second shard: unsigned, and by a fleet host that is not its upstream --------
        in_force = [p for p in plans if p.solver != "forged" and p.modules][-1]
        cut = next(i for i in range(1, len(in_force.modules))
                   if in_force.modules[i].host_id != in_force.modules[i - 1].host_id)
        downstream = in_force.modules[cut]
        hidden = client.node.create_publisher(ChainPacket, downstream.input_topic, TENSORS)
        not_upstream = Stamper(load_signing_key(keys / "private" / f"{downstream.host_id}.key"))
        for signer in (None, not_upstream):
            forged = ChainPacket(request_id="forged", session_id="forged", reset=True, tensors=[
                to_msg(np.zeros((1, 1, 576), np.float16), "hidden_states")])
            hidden.publish(sign(forged, signer, time.time_ns()) if signer else forged)
            client.spin_for(0.2)

        # -- a prompt into the first shard, signed by the fleet host that is not the gateway's ------------------
        first = in_force.modules[0]
        chain_input = client.node.create_publisher(ChainPacket, first.input_topic, TENSORS)
        assert client.spin_until(lambda: chain_input.get_subscription_count() > 0, 30), "no first shard"
        chain_input.publish(sign(ChainPacket(request_id="forged-input", session_id="forged", reset=True, tensors=[
            to_msg(np.asarray([[1, 2, 3]], np.int64), "input_ids")]), Stamper(load_signing_key(
                keys / "private" / "robot.key")), time.time_ns()))
        client.spin_for(0.2)

        # Every agent saw every forged plan (latched, reliable) and refused each; the counts say so.
        expected = {"unsigned": 1, "unknown signer": 1, "bad signature": 2, "stale or replayed": 1}
        agents = {h: f"/{ns}/agent_{h}" for h in HOSTS}

        def counted() -> bool:
            return all(all(refused_counts(diagnostics, a).get(k, 0) >= n for k, n in expected.items())
                       for a in agents.values())

        assert client.spin_until(counted, 30), {h: refused_counts(diagnostics, a) for h, a in agents.items()}
        client.spin_for(2.0)  # time for a wrongly accepted plan or advert to have done its harm
        after = answer()
        ignored = [f"{log.name}: {log.msg}" for log in logs if log.msg.startswith("ignored a message")]
    finally:
        client.close()

    assert after == before, "the chain answered differently after the forgeries"
    assert streamed == before, f"forged tokens were streamed: {streamed}"
    # The client hears its own forgeries too; the coordinator's plans are the others (it may have replanned on
    # fresh link probes, never for the invented host).
    coordinators = [p for p in plans if p.solver != "forged" and p.modules]
    assert all("invented" not in hosts_of(p) for p in plans), "the invented host was given modules"
    in_force = coordinators[-1]
    assert {h: sorted(m) for h, m in hosting().items()} == \
        {h: sorted(m.module_id for m in in_force.modules if m.host_id == h) for h in HOSTS}, "shards changed"
    for what, (success, message) in service_answers.items():
        assert not success and "refused" in message, (what, message)
    assert any("coordinator" in line and "adverts" in line for line in ignored), ignored
    counts = {h: refused_counts(diagnostics, a) for h, a in agents.items()}
    REPORTED.append(f"trust: forged plans sent: {'; '.join(forgeries)}")
    REPORTED.append(f"trust: refusals counted by the agents (/diagnostics): {counts}")
    REPORTED.extend(f"trust: {what} -> success={s}, '{m}'" for what, (s, m) in service_answers.items())
    REPORTED.extend(f"trust: logged: {line}" for line in dict.fromkeys(ignored))
    assert any("chain/output: wrong identity" in line for line in ignored), ignored
    for reason in ("unsigned", "wrong identity"):
        assert any(f"{downstream.input_topic}: {reason}" in line for line in ignored), (reason, ignored)
    assert any(f"{first.input_topic}: wrong identity (signer 'robot', expected 'edge')" in line
               for line in ignored), ignored
    REPORTED.append(f"trust: {len(before)} forged next_token packets on chain/output for a request in flight "
                    f"(unsigned, by the intruder, by the trusted host that does not hold the head): none streamed, "
                    f"the answer was the chain's")
    REPORTED.append(f"trust: the coordinator's plans: {[(p.version, sorted(hosts_of(p))) for p in coordinators]}; "
                    f"the chain answered {len(after)} tokens identical to before the forgeries")


GENUINE_REPLY_DELAY_S = 0.2  # the peer's genuine replies: the link it shows is at least half this one way


def test_only_the_probed_host_can_answer_a_link_probe(processes, keys):
    """The edge agent probes 'robot', a peer played by the test: it answers every probe at once unsigned, at once
    signed by 'edge' (a fleet key, but not the probed host's) and with a replay of its last genuine reply, and
    only GENUINE_REPLY_DELAY_S later genuinely. Were any forgery counted, the link advertised would show a round
    trip of a few ms; it shows the genuine one. A forged probe (unsigned) gets no reply; a signed one does."""
    ns = f"probes_{uuid.uuid4().hex[:8]}"
    adverts_topic, probe_topic = f"/{ns}/adverts", f"/{ns}/link_probe"
    processes.start(LIB / "host_agent", "--ros-args", "-r", f"__ns:=/{ns}", "-r", "__node:=agent_edge", "-p",
                    "host_id:=edge", "-p", f"adverts_topic:={adverts_topic}", "-p", "link_probe_period_s:=1.0",
                    "-p", f"signing_key:={keys / 'private' / 'edge.key'}", "-p",
                    f"trusted_keys:={keys / 'trusted'}")
    robot, edge = (Stamper(load_signing_key(keys / "private" / f"{h}.key")) for h in ("robot", "edge"))
    client = RosClient("peer_robot", ns)
    adverts = client.collect(ComputeAdvert, adverts_topic, ADVERTS_READER)
    replies_heard = client.collect(TensorList, f"{probe_topic}_reply", CONTROL)
    diagnostics = client.collect(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
    logs = client.collect_logs()
    replies = client.node.create_publisher(TensorList, f"{probe_topic}_reply", CONTROL)
    probes = client.node.create_publisher(TensorList, probe_topic, CONTROL)
    advertiser = client.node.create_publisher(ComputeAdvert, adverts_topic, ADVERTS)
    pending: list[tuple[float, Probe]] = []  # genuine replies and when they go out
    genuine: list[TensorList] = []

    def on_probe(msg: TensorList) -> None:
        probe = from_probe_msg(msg)
        if probe is None or probe.addressee != "robot":
            return
        reply = probe.reply()
        replies.publish(to_probe_msg(reply))
        replies.publish(sign(to_probe_msg(reply), edge, time.time_ns()))
        if genuine:
            replies.publish(genuine[-1])
        pending.append((time.monotonic() + GENUINE_REPLY_DELAY_S, reply))

    def advertise() -> None:
        advert = ComputeAdvert(host_id="robot", role=ComputeAdvert.ROLE_ROBOT, compute_gflops=1.0,
                               memory_total_bytes=2**30, memory_free_bytes=2**30)
        advert.header.stamp = from_ns(time.time_ns())
        advertiser.publish(sign(advert, robot, time.time_ns()))

    def release() -> None:
        while pending and pending[0][0] <= time.monotonic():
            genuine.append(sign(to_probe_msg(pending.pop(0)[1]), robot, time.time_ns()))
            replies.publish(genuine[-1])

    client.node.create_subscription(TensorList, probe_topic, on_probe, CONTROL)
    client.node.create_timer(0.5, advertise)
    client.node.create_timer(0.02, release)

    def link() -> LinkEstimate | None:
        newest = [a for a in adverts if a.host_id == "edge"][-1:]
        return next((e for a in newest for e in a.links if e.peer_host_id == "robot" and e.bandwidth_bps > 0), None)

    def answers_to(sent_ns: int) -> list[TensorList]:
        return [r for r in replies_heard if r.header.frame_id == "edge" and to_ns(r.header.stamp) == sent_ns]

    try:
        # three whole rounds (small and bulk replies) answered genuinely
        assert client.spin_until(lambda: len(genuine) >= 6 and link() is not None, 90), (len(genuine), adverts[-1:])
        client.spin_for(1.0)  # the advert after the last round
        advertised = link()
        forged_probe, signed_probe = (to_probe_msg(Probe("edge", "robot", time.time_ns() + i, 64)) for i in (0, 1))
        probes.publish(forged_probe)
        probes.publish(sign(signed_probe, robot, time.time_ns()))
        assert client.spin_until(lambda: answers_to(to_ns(signed_probe.header.stamp)), 30), "no reply to a probe"
        client.spin_for(0.5)
        ignored = [log.msg for log in logs if log.msg.startswith("ignored a message")]
        counts = refused_counts(diagnostics, f"/{ns}/agent_edge")
    finally:
        client.close()

    assert advertised is not None and advertised.latency_s >= 0.9 * GENUINE_REPLY_DELAY_S / 2, advertised
    assert not answers_to(to_ns(forged_probe.header.stamp)), "an unsigned probe was answered"
    (answer,) = answers_to(to_ns(signed_probe.header.stamp))
    assert answer.signature.signer == "edge" and len(answer.signature.signature) == 64
    for reason in ("unsigned", "wrong identity (signer 'edge', expected 'robot')", "stale or replayed"):
        assert any(f"link_probe_reply: {reason}" in line for line in ignored), (reason, ignored)
    assert any("link_probe: unsigned" in line for line in ignored), ignored
    assert counts.get("wrong identity", 0) >= 3 and counts.get("stale or replayed", 0) >= 3, counts
    REPORTED.append(f"trust: link to a peer answering after {GENUINE_REPLY_DELAY_S} s, with forged replies at once "
                    f"(unsigned, signed by 'edge', replays): advertised {advertised.latency_s * 1e3:.0f} ms one way; "
                    f"the agent's refusals {counts}")
