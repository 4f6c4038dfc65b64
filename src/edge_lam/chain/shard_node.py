"""A shard: one or more consecutive modules of a model chain, fed from one topic and publishing to the next.

Parameters are read at start, and those doc/chain.md's table marks live (bounds, idle timeout, threads) take effect
on `ros2 param set`; the sessions and KV bytes held against their bounds are on /diagnostics. A malformed packet,
one longer than ``max_context_tokens`` or a lost session is answered with an error packet downstream (the gateway
turns it into an error result or a replay), never a crash. Given an emulated slower host or link (benchmarks),
packets are held and released by timers (``link.delayed_release``), never by sleeping in the callback: in a host
agent the shard shares its executor with the agent and other components.

Packets of several sessions that wait at once run as one batch (``ShardCore.step_batch``: plain chain steps of as
many tokens, one per session, up to ``max_batch_sessions``), so the weights are read once per step for all of them.
The callback that gets a packet takes the others already delivered to the subscription, as rclpy's executor takes
them; each passes the standby and trust checks alone, and a session's own packets keep their order. The sizes of
the batches run show on /diagnostics. An emulated host or link (below) computes packets one at a time: its timers
release each when the emulated host would start it, which a batch would not honour.

A shard holding an early exit (``exit:L``) answers on ``exit_topic`` for the steps that ask it (route EXIT or
CHAIN_AND_EXIT): the exit's token and its probability. A step routed to the exit alone (the ``device`` policy, or a
probe of the robot's side) ends there: nothing of it goes downstream.
"""

from __future__ import annotations

import collections
import copy
import resource
import socket
import time

import torch
from edge_lam_msgs.msg import ChainPacket, PlacementPlan
from rclpy.node import Node
from rclpy.parameter import Parameter

from edge_lam.chain.shard import BadInput, BatchResult, ShardCore, Step, StepOutput, batches
from edge_lam.descriptors import ModuleSpec, Stage, wire_dtype_bytes
from edge_lam.link.delayed_release import DelayedRelease
from edge_lam.link.emulation import DelayLine, link_parameter
from edge_lam.model.adapters import load_adapter, parse_adapter_list
from edge_lam.model.loading import load_model
from edge_lam.model.sessions import SessionLost, give_back_memory
from edge_lam.ros.bounds import Bounds
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import LATCHED, TENSORS
from edge_lam.ros.trust import declare_trust
from edge_lam.wire.chain import fail, packet_bytes, packet_tensors, put_tensors, sampling, to_stage_msgs
from edge_lam.wire.tensors import TensorError

TRIM_PERIOD_S = 2.0  # how soon a released session's memory leaves the process


class ShardNode(Node):
    """Hosts ``modules`` of ``model``; ``input_topic`` -> ``output_topic``."""

    def __init__(self, node_name: str = "shard", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        model = declare(self, "model", "smollm2-135m-instruct", "Model id from the cache, or a transformers folder.")
        modules = declare(self, "modules", ["embedding", "blocks:0:30", "head"],
                              "Consecutive modules to host: embedding, blocks:START:END (END exclusive), head.")
        input_topic = declare(self, "input_topic", "chain/input", "Topic the first module reads packets from.")
        output_topic = declare(self, "output_topic", "chain/output", "Topic the last module publishes packets to.")
        wire_dtype = declare(self, "wire_dtype", "float16",
                             "Dtype of hidden states on the wire: float16, bfloat16 or float32 (exact).")
        idle = declare(self, "session_idle_timeout_s", 600.0, "Drop a session's KV cache after this long unused.",
                       on_change=lambda v: self._core.set_idle_timeout(v), check=_positive)
        threads = declare(self, "num_threads", 1, "Torch threads (decode is memory-bound: more rarely help).",
                          on_change=lambda v: setattr(self, "_threads", v), low=1)
        max_context = declare(self, "max_context_tokens", 2048, "Longest session a packet may build here, tokens: "
                              "a longer packet is refused before any compute.",
                              on_change=lambda v: setattr(self._core, "max_context_tokens", v), low=1)
        max_sessions = declare(self, "max_sessions", 64, "Sessions held at once; beyond, the least recently used is "
                               "dropped (the gateway replays it when asked again).",
                               on_change=lambda v: self._bound("max_sessions", v), low=1)
        max_kv_bytes = declare(self, "max_kv_bytes", 512 * 2**20, "KV-cache bytes the sessions may hold; beyond, the "
                               "least recently used are dropped.",
                               on_change=lambda v: self._bound("max_kv_bytes", v), low=1)
        host_id = declare(self, "host_id", "", "Host name reported in timings; empty for the machine's.")
        slowdown = declare(self, "compute_slowdown", 1.0, "Emulation for benchmarks: each step takes this many times "
                           "its measured compute (4.0 makes this host a 0.25x one); 1.0 for none.")
        input_link = declare(self, "input_link", Parameter.Type.DOUBLE_ARRAY, "Emulation for benchmarks: "
                             "[latency_s, bandwidth_bps] of the link packets arrive over; unset for none.")
        output_link = declare(self, "output_link", Parameter.Type.DOUBLE_ARRAY,
                              "The same for the link packets leave over (the hop back to the gateway).")
        exit_topic = declare(self, "exit_topic", "chain/exit",
                             "Topic an early exit (module exit:L) answers on; unused without one.")
        self._trust = declare_trust(self, "feed this shard hidden states in its upstream module's place")
        plan_topic = declare(self, "plan_topic", "", "PlacementPlan topic: with trust on, a packet is taken only from "
                             "the host the plan puts the upstream module on (the first module: the plan's "
                             "gateway_host); empty: from any fleet host.")
        self._standby = declare(self, "standby", False, "An idle copy (the host agent loads one where the plan keeps "
                                "a standby): weights loaded and subscribed, packets dropped; false serves them.",
                                on_change=self.set_standby)
        self._host_id = host_id or socket.gethostname()
        self._max_batch = declare(self, "max_batch_sessions", 16, "Packets of different sessions waiting at once run "
                                  "as one batch of up to this many (plain steps; the weights are read once for "
                                  "all); 1 runs one packet at a time.",
                                  on_change=lambda v: setattr(self, "_max_batch", v), low=1)
        weight_dtype = declare(self, "weight_dtype", "float32", "Precision of the weights: float32, bfloat16, "
                               "float16 or int8 (weight-only, per channel, bfloat16 activations).")
        adapter_files = declare(self, "adapters", Parameter.Type.STRING_ARRAY,
                                "LoRA adapters to serve, NAME=PATH (the edge trainer's adapter_path): this shard "
                                "applies the adapter's weights of its own layers; a request names one or none.")
        wire_dtype_bytes(wire_dtype)  # ValueError naming the choices
        line = DelayLine(slowdown, link_parameter(input_link or []), link_parameter(output_link or []))
        self._slowdown = slowdown
        self._wire_dtype = getattr(torch, wire_dtype)
        self._threads = threads
        specs = [ModuleSpec.parse(m) for m in modules]
        started = time.perf_counter()
        adapters = {name: load_adapter(path) for name, path in parse_adapter_list(adapter_files or []).items()}
        self._core = ShardCore(load_model(model, specs, weight_dtype), specs, idle,
                               max_context_tokens=max_context, max_sessions=max_sessions, max_kv_bytes=max_kv_bytes,
                               adapters=adapters)
        load_s = time.perf_counter() - started
        self._bounds = Bounds(self)
        self._bounds.add("sessions", lambda: self._core.session_count, lambda: self._core.max_sessions)
        self._bounds.add("kv_bytes", lambda: self._core.kv_bytes, lambda: self._core.max_kv_bytes)
        self._batch_sizes = BatchSizes()
        self._bounds.show(self._batch_sizes.values)
        self._pub = self.create_publisher(ChainPacket, output_topic, TENSORS)
        self._exit_pub = self.create_publisher(ChainPacket, exit_topic, TENSORS) if self._core.has_exit else None
        # exit answers held until an emulated slower host would have computed them: (due, packet)
        self._exit_outbox: collections.deque[tuple[float, ChainPacket]] = collections.deque()
        self._exit_timer = self.create_timer(1.0, self._release_exit_answers, autostart=False)
        self._held = DelayedRelease(self, line, self._process, self._send, packet_bytes) if line.delays else None
        # Subscribed even as a standby, so that taking over needs no discovery: the first packet after is served.
        self._sub = self.create_subscription(ChainPacket, input_topic, self.on_packet, TENSORS)
        self._first_module = self._core.module_ids[0]
        self._upstream_host = ""  # the plan's host upstream of us (the gateway's, if first); empty: any fleet host
        if plan_topic and self._trust.on:
            self._plans = self.create_subscription(PlacementPlan, plan_topic, self.on_plan, LATCHED)
        self._expiry = self.create_timer(min(idle, 10.0), self.expire_sessions)
        # Caches released since memory was last given back to the system (trimming after each would cost every
        # request's end some milliseconds)
        self._released = False
        self._trim = self.create_timer(TRIM_PERIOD_S, self.give_back_memory)
        self.get_logger().info(
            f"modules {self._core.module_ids} of {model} on {self._host_id}: "
            f"{self._sub.topic_name} -> {self._pub.topic_name}, hidden states as {wire_dtype}"
            + (f"; early exit answers on {self._exit_pub.topic_name}" if self._exit_pub else "")
            + ("; a standby: packets dropped until it serves" if self._standby else "")
            + (f"; adapters {list(self._core.adapters)} ({self._core.adapted_layers} linear layers here)"
               if adapters else "")
            + f"; {self._core.weight_bytes / 2**20:.0f} MiB of {weight_dtype} weights read in {load_s:.2f} s, "
            f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
        )

    def on_plan(self, plan: PlacementPlan) -> None:
        """Follow who feeds this shard: the host of the module before ours, or for the first module the gateway's
        host (any fleet host where the plan names none)."""
        if not self._trust.accept(plan, self._plans.topic_name, max_age=False):
            return
        ids = [m.module_id for m in plan.modules]
        if self._first_module in ids:
            index = ids.index(self._first_module)
            self._upstream_host = plan.modules[index - 1].host_id if index > 0 else plan.gateway_host

    def set_standby(self, standby: bool) -> None:
        self._standby = standby
        self.get_logger().info(f"standby: packets on {self._sub.topic_name} are dropped until a plan runs the "
                               "modules here" if standby else f"serving {self._sub.topic_name}")

    def on_packet(self, packet: ChainPacket) -> None:
        if self._held is not None:  # an emulated host: released to _process one by one, when it would start each
            if self._admit(packet):
                self._held.put(packet)
            return
        waiting = self._waiting(self._max_batch - 1) if self._max_batch > 1 else []
        work = [(p, self._decode(p)) for p in (packet, *waiting) if self._admit(p)]
        for group in batches(work, session=lambda w: w[0].session_id, max_size=self._max_batch,
                             key=lambda w: None if w[1] is None else self._core.batch_key(w[1])):
            if len(group) == 1:
                self._process(*group[0])
            else:
                self._run_batch(group)
            for each, _ in group:
                self._send(each)  # releases and errors pass on untouched, so every module and the gateway see them

    def _admit(self, packet: ChainPacket) -> bool:
        if self._standby:
            return False  # an idle copy: the module's host in the plan answers
        # With trust on, only the upstream host may feed the chain: a forged packet is dropped here, not computed on.
        return self._trust.accept(packet, self._sub.topic_name, identity=self._upstream_host or None)

    def _waiting(self, limit: int) -> list[ChainPacket]:
        """Up to ``limit`` packets already delivered to the subscription, taken at once the way rclpy's executor
        takes each (the executor then finds none of them left)."""
        taken: list[ChainPacket] = []
        try:
            with self._sub.handle:
                while len(taken) < limit:
                    got = self._sub.handle.take_message(self._sub.msg_type, self._sub.raw)
                    if got is None:
                        break
                    taken.append(got[0])
        except Exception as err:  # the subscription is being destroyed (shutdown): serve what was taken
            self.get_logger().warning(f"taking the packets waiting on {self._sub.topic_name}: "
                                      f"{type(err).__name__}: {err}")
        return taken

    def _ends_here(self, packet: ChainPacket) -> bool:
        return self._exit_pub is not None and packet.route == ChainPacket.ROUTE_EXIT

    def _send(self, packet: ChainPacket) -> None:
        """Publish downstream, signed by this host: the next hop checks it came from the chain."""
        if not self._ends_here(packet):
            self._pub.publish(self._trust.sign(packet))

    def _process(self, packet: ChainPacket, step: Step | None = None) -> float:
        """Run the packet through the modules (a release frees its session); the seconds the modules computed.
        ``step``: the packet's step, when it was decoded already."""
        if packet.release:
            self._core.release(packet.session_id)
            self._released = True
        elif packet.error_code == ChainPacket.ERROR_NONE:
            step = step or self._decode(packet)
            if step is not None:
                return self._run(packet, step)
        if self._ends_here(packet):  # a probe of the exit, or an error before it: the gateway hears it here
            self._answer_exit(packet, 0.0)
        return 0.0

    def _decode(self, packet: ChainPacket) -> Step | None:
        """The step a data packet asks for; None for a release or an error packet, or when its tensors are
        malformed (it is then an error packet)."""
        if packet.release or packet.error_code != ChainPacket.ERROR_NONE:
            return None
        try:
            tensors = packet_tensors(packet, self._core.max_context_tokens)
        except TensorError as err:
            self._failed(packet, err)
            return None
        return Step(tensors, packet.session_id, packet.position, sampling(packet.options), packet.step,
                    packet.reset, packet.truncate, packet.verify, packet.route, packet.options.adapter)

    def _answer_exit(self, answer: ChainPacket, computed_s: float) -> None:
        """Publish an exit's answer once an emulated slower host would have computed it (at once on a real one)."""
        self._exit_outbox.append((time.monotonic() + computed_s * (self._slowdown - 1.0), answer))
        self._release_exit_answers()

    def _release_exit_answers(self) -> None:
        self._exit_timer.cancel()
        while self._exit_outbox and self._exit_outbox[0][0] <= time.monotonic():
            self._exit_pub.publish(self._trust.sign(self._exit_outbox.popleft()[1]))
        if self._exit_outbox:
            self._exit_timer.timer_period_ns = max(int((self._exit_outbox[0][0] - time.monotonic()) * 1e9), 1)
            self._exit_timer.reset()

    def _run(self, packet: ChainPacket, step: Step) -> float:
        self._use_threads()
        try:
            out = self._core.step(step.tensors, step.session_id, step.position, step.reset, step.sampling, step.step,
                                  truncate=step.truncate, verify=step.verify, route=step.route, adapter=step.adapter)
        except Exception as err:
            self._failed(packet, err)
        else:
            self._batch_sizes.add(1)
            return self._answered(packet, out)
        if self._ends_here(packet):
            self._answer_exit(packet, 0.0)
        return 0.0

    def _run_batch(self, group: list[tuple[ChainPacket, Step]]) -> None:
        """Run plain steps of different sessions as one batch; each packet gets its own answer or error."""
        self._use_threads()
        try:
            result = self._core.step_batch([step for _, step in group])
        except Exception as err:  # a bug in forming the batch: every packet's error, none lost
            result = BatchResult([err] * len(group), 0)
        if result.error is not None:
            self.get_logger().warning(f"a batch of {len(group)} sessions failed ({type(result.error).__name__}: "
                                      f"{result.error}): its packets ran one by one")
        if result.batched:
            self._batch_sizes.add(result.batched)
            self.get_logger().debug(f"ran a batch of {result.batched} sessions")
        for (packet, _), out in zip(group, result.outputs, strict=True):
            if isinstance(out, Exception):
                self._failed(packet, out)
                continue
            if not result.batched:
                self._batch_sizes.add(1)
            self._answered(packet, out)

    def _use_threads(self) -> None:
        if torch.get_num_threads() != self._threads:
            # torch's thread count belongs to the calling thread: set it in the one running this step, not the one
            # that built the shard (a host agent builds components in a loader thread)
            torch.set_num_threads(self._threads)

    def _failed(self, packet: ChainPacket, err: Exception) -> None:
        """Turn the packet into the error packet that tells downstream (and the gateway) why it failed."""
        where = f"{self.get_name()} ({', '.join(self._core.module_ids)})"
        if isinstance(err, (BadInput, TensorError)):
            self.get_logger().error(f"request {packet.request_id}: bad input: {err}")
            fail(packet, ChainPacket.ERROR_BAD_INPUT, f"{where}: {err}")
        elif isinstance(err, SessionLost):
            self.get_logger().warning(f"request {packet.request_id}: {err}")
            fail(packet, ChainPacket.ERROR_SESSION_LOST, f"{where}: {err}")
        else:  # a bug or resource error must not take the shard down with it
            self.get_logger().error(f"request {packet.request_id}: {type(err).__name__}: {err}")
            fail(packet, ChainPacket.ERROR_INTERNAL, f"{where}: {type(err).__name__}: {err}")

    def _answered(self, packet: ChainPacket, out: StepOutput) -> float:
        """Put a step's output in its packet (and the exit's answer out); the seconds the modules computed."""
        self._released |= bool(out.dropped)
        for session_id in out.dropped:
            self.get_logger().info(f"session {session_id} dropped (least recently used) to stay within "
                                   f"max_sessions {self._core.max_sessions} and max_kv_bytes "
                                   f"{self._core.max_kv_bytes}")
        # an emulated slower host's compute counts as the modules' own time
        stages = [Stage(f"module:{m}", self._host_id, s * self._slowdown) for m, s in out.timings]
        if out.exit is not None:
            answer = copy.deepcopy(packet)
            put_tensors(answer, out.exit, torch.float32)
            answer.timings.extend(to_stage_msgs(stages))
            self._answer_exit(answer, sum(s for _, s in out.timings))
        if out.tensors is not None:
            put_tensors(packet, out.tensors, self._wire_dtype)
            packet.timings.extend(to_stage_msgs(stages))
        return sum(s for _, s in out.timings)

    def _bound(self, name: str, value: int) -> None:
        """A lowered bound applies at once, not at the next packet."""
        setattr(self._core, name, value)
        for session_id in self._core.evict():
            self._released = True
            self.get_logger().info(f"session {session_id} dropped: {name} lowered to {value}")

    def expire_sessions(self) -> None:
        for session_id in self._core.expire():
            self._released = True
            self.get_logger().info(f"session {session_id} expired (idle)")

    def give_back_memory(self) -> None:
        """Released caches' memory back to the system, not only to the heap."""
        if self._released:
            self._released = False
            give_back_memory()


class BatchSizes:
    """The sizes of the batches a shard ran (a packet run alone is a batch of one), shown on /diagnostics: the
    largest and the mean since the last status, and how many steps ran in batches of more than one so far."""

    def __init__(self) -> None:
        self._count = self._sum = self._largest = self._batched_steps = 0

    def add(self, size: int) -> None:
        self._count, self._sum, self._largest = self._count + 1, self._sum + size, max(self._largest, size)
        self._batched_steps += size if size > 1 else 0

    def values(self) -> dict[str, str]:
        """The values of the status, starting the next period."""
        mean = self._sum / self._count if self._count else 0.0
        shown = {"batch_sessions_largest": str(self._largest), "batch_sessions_mean": f"{mean:.2f}",
                 "batched_steps": str(self._batched_steps)}
        self._count = self._sum = self._largest = 0
        return shown


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def main(args: list[str] | None = None) -> None:
    spin_node(ShardNode, args)
