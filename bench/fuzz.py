"""Fuzzing: every subscription and service of every node kind, with generated malformed and extreme messages.

Each target is a node kind started as its own real process(es) on this machine (localhost discovery, a namespace of
its own). The bench asks the graph which topics the node subscribes and which services it serves, asks a valid
question first (the probe: a request, a frame, a load; its answer is the reference), records what really flows on
those topics as seeds, then sends ``--per-endpoint`` generated messages to every endpoint (bench/fuzz_messages.py:
seeds mutated, or messages built from nothing; seeded, so a run can be repeated), checking between batches that the
process lives. Then the valid question again: its answer must equal the reference. Per target it counts messages
sent, crashes (a process that ended; it is restarted for the next endpoint), hangs (no answer to the probe within
its timeout from a live process), errors answered (service responses that refused, and warnings or errors the node
logged), and the node's resident memory before and after.

    python bench/fuzz.py [--per-endpoint 1000] [--seconds 300] [--targets chain,camera_encoder] [--seed 0]
                         [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psutil
import rclpy
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import (
    ComputeAdvert,
    InferenceRequest,
    InferenceResult,
    ModuleAssignment,
    PlacementPlan,
    SemanticTokens,
    TensorList,
    Vocabulary,
)
from edge_lam_msgs.srv import Generate, LoadModule, UnloadModule
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log, ParameterType
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, Imu, LaserScan
from std_msgs.msg import String

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from fuzz_messages import Generator, interface_class

from edge_lam.processes import stop_processes
from edge_lam.ros.qos import ADVERTS, CONTROL, TENSORS, TOKENS, VOCABULARIES
from edge_lam.ros.spin import spin_until
from edge_lam.wire.stamps import from_ns

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
BATCH = 25  # messages between two checks that the process lives
SERVICE_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 60.0
ROSOUT = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


class ProbeFailed(RuntimeError):
    """The valid question got no answer in time."""


@dataclass
class Target:
    """A node kind: how to start it, which of its nodes are fuzzed, and the valid question it must still answer."""

    name: str
    commands: list[list[str]]
    nodes: list[str]
    probe: Callable[[Bench], object]
    skip_services: tuple[str, ...] = ()


@dataclass
class Figures:
    target: str
    endpoints: int = 0
    sent: int = 0
    crashes: int = 0
    hangs: int = 0
    wrong_answers: int = 0
    errors_answered: int = 0
    unanswered_calls: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    seconds: float = 0.0
    fewest_sent: int = 0  # to one endpoint (the goal is per_endpoint to each)
    fewest_at: str = ""
    notes: list[str] = field(default_factory=list)

    def count(self, endpoint: str, sent: int) -> None:
        self.sent += sent
        if not self.fewest_at or sent < self.fewest_sent:
            self.fewest_sent, self.fewest_at = sent, endpoint


class Bench:
    """The client node, the processes of one target, and what the target logs."""

    def __init__(self, namespace: str, log, max_rss_mb: float) -> None:
        self.namespace = namespace
        self.log = log
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("fuzzer", namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.processes: list[subprocess.Popen] = []
        self.logged: list[Log] = []
        self.node.create_subscription(Log, "/rosout", self.logged.append, ROSOUT)
        self.over_memory: list[str] = []
        self._watching = True
        self._watchdog = threading.Thread(target=self._watch, args=(max_rss_mb,), daemon=True)
        self._watchdog.start()

    def _watch(self, max_rss_mb: float) -> None:
        """Kill a target that grows past ``max_rss_mb`` (an input without a bound), before it takes the machine."""
        while self._watching:
            for process in list(self.processes):
                with contextlib.suppress(psutil.Error):
                    rss_mb = psutil.Process(process.pid).memory_info().rss / 1e6
                    if rss_mb > max_rss_mb and process.poll() is None:
                        process.kill()
                        self.over_memory.append(f"{pathlib.Path(process.args[0]).name} killed at {rss_mb:.0f} MB")
            time.sleep(0.2)

    def spin_until(self, done: Callable[[], object], timeout_s: float) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def collect(self, msg_type, topic: str, qos: QoSProfile) -> list:
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def publisher(self, msg_type, topic: str, qos: QoSProfile):
        publisher = self.node.create_publisher(msg_type, topic, qos)
        if not self.spin_until(lambda: publisher.get_subscription_count() > 0, PROBE_TIMEOUT_S):
            raise ProbeFailed(f"nobody subscribes {topic}")
        return publisher

    def call(self, srv_type, name: str, request, timeout_s: float = PROBE_TIMEOUT_S):
        client = self.node.create_client(srv_type, name)
        try:
            if not self.spin_until(client.service_is_ready, timeout_s):
                raise ProbeFailed(f"no service {name}")
            future = client.call_async(request)
            if not self.spin_until(future.done, timeout_s):
                raise ProbeFailed(f"{name} did not answer in {timeout_s:g} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def start(self, target: Target) -> None:
        for command in target.commands:
            self.processes.append(subprocess.Popen(
                [command[0], "--ros-args", "-r", f"__ns:=/{self.namespace}", *command_args(command)],
                stdout=self.log, stderr=subprocess.STDOUT))
        names = set(target.nodes)
        if not self.spin_until(lambda: names <= self.graph_nodes(), 120.0):
            raise ProbeFailed(f"nodes {sorted(names - self.graph_nodes())} did not come up")

    def graph_nodes(self) -> set[str]:
        return {name for name, ns in self.node.get_node_names_and_namespaces() if ns == f"/{self.namespace}"}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def rss_mb(self) -> float:
        total = 0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(process.pid).memory_info().rss
        return total / 1e6

    def stop(self) -> list[int | None]:
        stop_processes(self.processes, grace_s=5.0)
        codes = [p.returncode for p in self.processes]
        self.processes = []
        return codes

    def close(self) -> None:
        self._watching = False
        self.stop()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def command_args(command: list[str]) -> list[str]:
    """Parameters come after a '--' in a target's command: ``[exe, '--', '-p', 'a:=1']``."""
    return command[command.index("--") + 1:] if "--" in command else []


def executable(name: str, *params: str) -> list[str]:
    args = [a for p in params for a in ("-p", p)]
    return [str(LIB / name), "--", *args]


# -- probes: the valid question of each target ------------------------------------------------------------------

def probe_chain(bench: Bench) -> object:
    """A greedy answer through the chain; asked again while the chain is still connecting (an error answer)."""
    deadline = time.monotonic() + 120.0
    while True:
        request = Generate.Request()
        request.request.request_id = f"probe-{uuid.uuid4().hex[:8]}"
        request.request.prompt = "Name one colour."
        request.request.options.max_new_tokens = 6
        answer = bench.call(Generate, f"/{bench.namespace}/generate", request, 120.0)
        if not answer.result.error_code:
            return answer.result.text
        if time.monotonic() > deadline:
            raise ProbeFailed(f"the chain answered an error: {answer.result.error_message}")
        bench.spin_until(lambda: False, 1.0)


def tokens_after(bench: Bench, modality: str, publish: Callable[[object], None], make: Callable[[int], object],
                 count: int = 1) -> tuple:
    """Publish ``count`` messages made by ``make(i)`` and return the token ids of the last tokens that come: a
    windowed encoder's first window may still hold what came before, its last one holds only these messages."""
    got = bench.collect(SemanticTokens, f"tokens/{modality}", TOKENS)
    deadline = time.monotonic() + 30.0
    sent = 0
    while not got:  # sent again (stamps going on) until tokens come: a busy node may not have matched us yet
        if time.monotonic() > deadline:
            raise ProbeFailed(f"no tokens on tokens/{modality} in 30 s ({sent} messages sent)")
        for i in range(sent, sent + count):
            publish(make(i))
            bench.spin_until(lambda: False, 0.02)
        sent += count
        bench.spin_until(lambda: bool(got), 5.0)
    seen = -1
    while len(got) != seen:  # until no more tokens come for half a second
        seen = len(got)
        bench.spin_until(lambda seen=seen: len(got) > seen, 0.5)
    return tuple(got[-1].token_ids)


def probe_camera(bench: Bench) -> object:
    image = Image(encoding="rgb8", width=64, height=48, step=64 * 3)
    grid = np.indices((48, 64)).sum(axis=0) % 256
    image.data = np.dstack([grid, grid[::-1], 255 - grid]).astype(np.uint8).tobytes()
    publisher = bench.publisher(Image, "image_raw", TOKENS)
    return tokens_after(bench, "image", publisher.publish, lambda i: image)


def probe_scan(bench: Bench) -> object:
    scan = LaserScan(angle_min=-np.pi, angle_increment=2 * np.pi / 360, range_min=0.1, range_max=10.0)
    scan.angle_max = scan.angle_min + scan.angle_increment * 359
    scan.ranges = [0.5 if 175 <= i < 185 else float("inf") for i in range(360)]
    publisher = bench.publisher(LaserScan, "scan", TOKENS)
    return tokens_after(bench, "scan", publisher.publish, lambda i: scan)


def probe_text(bench: Bench) -> object:
    publisher = bench.publisher(String, "text", TOKENS)
    return tokens_after(bench, "text", publisher.publish, lambda i: String(data="the door is open"))


def probe_odometry(bench: Bench) -> object:
    publisher = bench.publisher(Odometry, "odom", TOKENS)
    start_ns = time.time_ns()

    def odom(i: int) -> Odometry:
        msg = Odometry()
        msg.header.stamp = from_ns(start_ns + 50_000_000 * i)
        msg.twist.twist.linear.x, msg.twist.twist.angular.z = 0.3, 0.1
        msg.pose.pose.orientation.w = 1.0
        return msg
    return tokens_after(bench, "odometry", publisher.publish, odom, count=60)


def probe_imu(bench: Bench) -> object:
    publisher = bench.publisher(Imu, "imu", TOKENS)
    start_ns = time.time_ns()

    def imu(i: int) -> Imu:
        msg = Imu()
        msg.header.stamp = from_ns(start_ns + 20_000_000 * i)
        msg.orientation.w = 1.0
        msg.linear_acceleration.z = 9.81
        msg.angular_velocity.z = 0.2
        return msg
    return tokens_after(bench, "imu", publisher.publish, imu, count=150)


def probe_echo(bench: Bench) -> object:
    replies = bench.collect(TensorList, "pong", TENSORS)
    publisher = bench.publisher(TensorList, "ping", TENSORS)
    from edge_lam.wire.tensors import to_msg
    ping = TensorList(tensors=[to_msg(np.arange(12, dtype=np.float32).reshape(3, 4), "x")])
    publisher.publish(ping)
    if not bench.spin_until(lambda: bool(replies), 30.0):
        raise ProbeFailed("no pong")
    return bytes(replies[-1].tensors[0].data) if replies[-1].tensors else b""


def csi_window() -> object:
    """One valid ChannelState: a seeded random window of the air example's size."""
    from edge_lam.wire.csi import CsiWindow, to_channel_state
    rng = np.random.default_rng(0)
    h = (rng.normal(size=(16, 16, 32)) + 1j * rng.normal(size=(16, 16, 32))).astype(np.complex64)
    return to_channel_state(CsiWindow(h, "fuzz/ue0", 3.5e9, 360e3, 0.5e-3))


def probe_csi(bench: Bench) -> object:
    from edge_lam_msgs.msg import ChannelState
    publisher = bench.publisher(ChannelState, "csi", TOKENS)
    window = csi_window()
    return tokens_after(bench, "csi", publisher.publish, lambda i: window)


def probe_predictor(bench: Bench) -> object:
    """The beams ranked for one window (published again until a prediction comes: the node may not have matched)."""
    from edge_lam_msgs.msg import ChannelPrediction, ChannelState
    predictions = bench.collect(ChannelPrediction, "csi/prediction", TOKENS)
    publisher = bench.publisher(ChannelState, "csi", TOKENS)
    window = csi_window()
    deadline = time.monotonic() + 30.0
    while not predictions:
        if time.monotonic() > deadline:
            raise ProbeFailed("no prediction on csi/prediction in 30 s")
        publisher.publish(window)
        bench.spin_until(lambda: bool(predictions), 5.0)
    return tuple(predictions[-1].top_beams), bytes(predictions[-1].predicted.real)


def probe_host_agent(bench: Bench) -> object:
    module = ModuleAssignment(module_id="blocks_0_1", kind=ModuleAssignment.KIND_BLOCKS, layer_start=0, layer_end=1,
                              input_topic="chain/probe_in", output_topic="chain/probe_out", memory_bytes=1000)
    service = f"/{bench.namespace}/agent/load_module"
    loaded = bench.call(LoadModule, service, LoadModule.Request(module=module, model_id=MODEL), 120.0)
    unloaded = bench.call(UnloadModule, f"/{bench.namespace}/agent/unload_module",
                          UnloadModule.Request(module_id="blocks_0_1"), 60.0)
    return loaded.success, unloaded.success


def probe_coordinator(bench: Bench) -> object:
    plans = bench.collect(PlacementPlan, "plan", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                                            durability=DurabilityPolicy.TRANSIENT_LOCAL))
    publisher = bench.node.create_publisher(ComputeAdvert, "adverts", ADVERTS)
    host = f"probe_{uuid.uuid4().hex[:6]}"
    seen = len(plans)

    def advertise() -> None:
        advert = ComputeAdvert(host_id=host, role=ComputeAdvert.ROLE_EDGE, compute_gflops=50.0,
                               memory_total_bytes=8_000_000_000, memory_free_bytes=8_000_000_000, load=0.1,
                               battery_fraction=float("nan"))
        advert.header.stamp = bench.node.get_clock().now().to_msg()
        publisher.publish(advert)

    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        advertise()
        if bench.spin_until(lambda: any(host in {m.host_id for m in p.modules} for p in plans[seen:]), 1.0):
            bench.node.destroy_publisher(publisher)
            return True
    bench.node.destroy_publisher(publisher)
    raise ProbeFailed(f"no plan placed the model on the only advertised host {host}")


def probe_reporter(bench: Bench) -> object:
    """The probe stands in for a gateway: it reads the requests and writes results, which the reporter waits for."""
    requests = bench.collect(InferenceRequest, "requests", CONTROL)
    bench.node.create_publisher(InferenceResult, "results", CONTROL)  # lives with the node: the reporter may look
    vocabulary = bench.node.create_publisher(Vocabulary, "tokens/odometry/vocabulary", VOCABULARIES)
    tokens = bench.publisher(SemanticTokens, "tokens/odometry", TOKENS)
    vocabulary.publish(Vocabulary(modality="odometry", encoder="probe", encoder_version="1",
                                  words=["forward-slow", "still"]))
    seen = len(requests)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        msg = SemanticTokens(robot_id="probe", sensor="odom", modality="odometry", encoder="probe",
                             encoder_version="1", token_ids=[0])
        msg.header.stamp = bench.node.get_clock().now().to_msg()
        tokens.publish(msg)
        if bench.spin_until(lambda: any("forward-slow" in r.prompt for r in requests[seen:]), 1.0):
            bench.node.destroy_publisher(vocabulary)
            return True
    raise ProbeFailed("the reporter asked nothing about the tokens it was given")


class Training:
    """The trainers' probe: an activation the robot really sent, replayed, gets gradients from the edge."""

    def __init__(self) -> None:
        self.activation: TensorList | None = None

    def __call__(self, bench: Bench) -> object:
        gradients = bench.collect(TensorList, "training/gradients", TENSORS)
        if self.activation is None:
            activations = bench.collect(TensorList, "training/activations", TENSORS)
            if not bench.spin_until(lambda: bool(activations), 120.0):
                raise ProbeFailed("the robot sent no activation")
            self.activation = activations[0]
            if not bench.spin_until(lambda: bool(gradients), 60.0):
                raise ProbeFailed("the edge answered no activation")
            return True
        publisher = bench.publisher(TensorList, "training/activations", TENSORS)
        publisher.publish(self.activation)
        if not bench.spin_until(lambda: bool(gradients), 60.0):
            raise ProbeFailed("the edge answered no replayed activation")
        return True


def tiny_model(folder: pathlib.Path) -> pathlib.Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer, as the training tests use, so the trainers start fast."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_lam.model.loading import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def targets(work: pathlib.Path) -> list[Target]:
    whole = "modules:=['embedding', 'blocks:0:30', 'head']"
    training = ["model:={model}", "cut_layer:=2", "lora_rank:=4", "lora_alpha:=8.0",
                "lora_target_modules:=[q_proj,v_proj]", "adapter_codec:=fp32"]
    return [
        Target("chain", [executable("shard", f"model:={MODEL}", whole),
                         executable("gateway", f"model:={MODEL}", "max_new_tokens_limit:=16",
                                    "max_context_tokens:=256", "step_timeout_s:=20.0", "failover_timeout_s:=20.0")],
               ["shard", "gateway"], probe_chain),
        Target("camera_encoder", [executable("camera_encoder", "compressed_topic:=image_raw/compressed")],
               ["camera_encoder"], probe_camera),
        Target("imu_encoder", [executable("imu_encoder")], ["imu_encoder"], probe_imu),
        Target("odometry_encoder", [executable("odometry_encoder")], ["odometry_encoder"], probe_odometry),
        Target("scan_encoder", [executable("scan_encoder")], ["scan_encoder"], probe_scan),
        Target("text_encoder", [executable("text_encoder")], ["text_encoder"], probe_text),
        Target("tensor_echo", [executable("tensor_echo")], ["tensor_echo"], probe_echo),
        Target("csi_encoder", [executable("csi_encoder")], ["csi_encoder"], probe_csi),
        Target("channel_predictor", [executable("channel_predictor")], ["channel_predictor"], probe_predictor),
        Target("reporter", [executable("reporter", "modalities:=[odometry]", "period_s:=0.5",
                                       "answer_timeout_s:=2.0", "max_age_s:=30.0")], ["reporter"], probe_reporter),
        Target("host_agent", [[*executable("host_agent", "host_id:=fuzzhost", f"model:={MODEL}",
                                           "memory_limit_bytes:=3000000000", "advert_period_s:=0.5"),
                               "-r", "__node:=agent"]],
               ["agent"], probe_host_agent),
        Target("coordinator", [executable("coordinator", f"model:={MODEL}", "adverts_topic:=adverts",
                                          "plan_topic:=plan", "replan_period_s:=0.5")],
               ["coordinator"], probe_coordinator),
        Target("trainers", [executable("edge_trainer", *[p.format(model=work / "tiny") for p in training],
                                       "rounds:=1000", "min_robots:=1", "gradient_codec:=fp32"),
                            executable("robot_trainer", *[p.format(model=work / "tiny") for p in training],
                                       "robots:=1", "robot_index:=0", "steps_per_round:=1000000", "batch_size:=2",
                                       "activation_codec:=fp32")],
               ["edge_trainer", "robot_trainer"], Training()),
    ]


# -- the fuzzing --------------------------------------------------------------------------------------------------

def endpoints(bench: Bench, node: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    ns = f"/{bench.namespace}"
    topics = [(name, types[0]) for name, types in bench.node.get_subscriber_names_and_types_by_node(node, ns)
              if name not in ("/parameter_events", "/rosout", "/clock")]
    services = [(name, types[0]) for name, types in bench.node.get_service_names_and_types_by_node(node, ns)]
    return topics, services


def settled(bench: Bench, nodes: list[str], quiet_s: float = 2.0, timeout_s: float = 60.0) -> None:
    """Wait until the graph shows no new endpoint of ``nodes`` for ``quiet_s``: a node is in the graph before all
    of its subscriptions and services are."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = sum(len(kind) for node in nodes for kind in endpoints(bench, node))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        bench.spin_until(lambda: False, 0.2)


def service_class(type_name: str):
    """A service type, including the hidden services of an action ('pkg/action/Name_SendGoal')."""
    package, kind, name = type_name.split("/")
    if kind == "action":
        action, part = name.rsplit("_", 1)
        impl = interface_class(f"{package}/action/{action}").Impl
        return {"SendGoal": impl.SendGoalService, "GetResult": impl.GetResultService}[part]
    return interface_class(type_name)


def publisher_qos(bench: Bench, topic: str, node: str) -> QoSProfile:
    """A QoS that the node's subscription accepts (its reliability, durability and liveliness), keep-last 1000."""
    for info in bench.node.get_subscriptions_info_by_topic(topic):
        if info.node_name == node:
            reader = info.qos_profile
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=reader.reliability,
                             durability=reader.durability)
            if reader.liveliness == LivelinessPolicy.AUTOMATIC and reader.liveliness_lease_duration.nanoseconds > 0:
                qos.liveliness = LivelinessPolicy.AUTOMATIC
                qos.liveliness_lease_duration = reader.liveliness_lease_duration
            return qos
    return QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def fuzz_topic(bench: Bench, gen: Generator, node: str, topic: str, type_name: str, count: int, deadline: float,
               seeds: list, figures: Figures) -> None:
    cls = interface_class(type_name)
    publisher = bench.node.create_publisher(cls, topic, publisher_qos(bench, topic, node))
    bench.spin_until(lambda: publisher.get_subscription_count() > 0, 10.0)
    sent = 0
    try:
        while sent < count and time.monotonic() < deadline:
            for _ in range(min(BATCH, count - sent)):
                publisher.publish(gen.message(cls, seeds))
                sent += 1
            publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=2.0))
            bench.spin_until(lambda: False, 0.01)
            if not bench.alive():
                break
    finally:
        figures.count(topic, sent)
        bench.node.destroy_publisher(publisher)


def fuzz_service(bench: Bench, gen: Generator, service: str, type_name: str, count: int, deadline: float,
                 figures: Figures) -> None:
    """Requests built from nothing (a service's traffic is not seen on the graph, so there are no seeds)."""
    srv = service_class(type_name)
    client = bench.node.create_client(srv, service)
    if not bench.spin_until(client.service_is_ready, 10.0):
        figures.notes.append(f"{service}: not ready")
        bench.node.destroy_client(client)
        return
    pending: list = []  # (future, when sent): calls the node answers
    doomed: list = []  # (future, when sent): calls rclpy's own parameter service fails on, never answered
    sent = unanswered = 0

    def settle(limit: int) -> None:
        """Wait until at most ``limit`` answerable calls are in flight (a node's service queue is 10 deep); a call
        unanswered after SERVICE_TIMEOUT_S is counted and given up."""
        nonlocal unanswered
        bench.spin_until(lambda: sum(not f.done() for f, _ in pending) <= limit, SERVICE_TIMEOUT_S)
        now = time.monotonic()
        for calls in (pending, doomed):
            for future, at in list(calls):
                if future.done():
                    calls.remove((future, at))
                    response = future.result()
                    if response is not None and refused(response):
                        figures.errors_answered += 1
                elif now - at >= SERVICE_TIMEOUT_S:
                    calls.remove((future, at))
                    client.remove_pending_request(future)
                    unanswered += 1

    try:
        while sent < count and time.monotonic() < deadline and bench.alive():
            request = gen.message(srv.Request, [])
            (doomed if unknown_parameter_type(request) else pending).append(
                (client.call_async(request), time.monotonic()))
            sent += 1
            if len(pending) >= 8 or len(doomed) >= 64:
                settle(4)
        while pending or doomed:
            settle(0)
        figures.unanswered_calls += unanswered
        if unanswered:
            figures.notes.append(f"{service}: {unanswered} calls unanswered after {SERVICE_TIMEOUT_S:g} s")
    finally:
        figures.count(service, sent)
        bench.node.destroy_client(client)


def unknown_parameter_type(request) -> bool:
    """A set_parameters request naming a parameter type rclpy does not know: its own service raises on it and never
    answers (the node logs the failure and goes on)."""
    known = range(ParameterType.PARAMETER_NOT_SET, ParameterType.PARAMETER_STRING_ARRAY + 1)
    return any(p.value.type not in known for p in getattr(request, "parameters", ())
               if hasattr(p, "value") and hasattr(p.value, "type"))


def refused(response) -> bool:
    """Whether a service response says no: success false, an error field set, or a goal not accepted."""
    for name in response.get_fields_and_field_types():
        value = getattr(response, name)
        if (name in ("success", "accepted", "successful") and value is False) or (name == "error_code" and value):
            return True
        if hasattr(value, "get_fields_and_field_types") and refused(value):
            return True
    return False


def seed_messages(bench: Bench, topics: list[tuple[str, str, str]]) -> dict[str, list]:
    """Listen on every fuzzed topic from now on: what really flows there becomes a seed for its mutations."""
    seeds: dict[str, list] = {}
    for _, topic, type_name in topics:
        if topic not in seeds:
            seeds[topic] = []
            store = seeds[topic]
            bench.node.create_subscription(interface_class(type_name), topic,
                                           lambda msg, store=store: store.append(msg) if len(store) < 50 else None,
                                           QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    return seeds


def note_growth(figures: Figures, endpoint: str, before_mb: float, after_mb: float, threshold_mb: float = 50.0
                ) -> None:
    """Name the endpoint whose messages grew the target's memory by more than ``threshold_mb``."""
    if after_mb - before_mb > threshold_mb:
        figures.notes.append(f"{endpoint}: RSS {before_mb:.0f} -> {after_mb:.0f} MB")


def run_target(target: Target, args, work: pathlib.Path, log) -> Figures:
    figures = Figures(target.name)
    started = time.monotonic()
    gen = Generator(args.seed)
    bench = Bench(f"fuzz_{target.name}_{uuid.uuid4().hex[:6]}", log, args.max_rss_mb)
    try:
        bench.start(target)
        settled(bench, target.nodes)
        topics = [(node, t, ty) for node in target.nodes for t, ty in endpoints(bench, node)[0]]
        services = [(s, ty) for node in target.nodes for s, ty in endpoints(bench, node)[1]
                    if not s.endswith(target.skip_services or ("\0",))]
        figures.endpoints = len(topics) + len(services)
        seeds = seed_messages(bench, topics)
        reference = target.probe(bench)
        bench.spin_until(lambda: False, 0.5)
        figures.rss_before_mb = bench.rss_mb()
        first_log = len(bench.logged)
        deadline = started + args.seconds
        left = figures.endpoints

        def share() -> float:
            """The time left over the endpoints left: what a quick endpoint leaves, the slower ones after it get."""
            nonlocal left
            left -= 1
            return time.monotonic() + max((deadline - time.monotonic()) / (left + 1), 1.0)

        for node, topic, type_name in topics:
            if not bench.alive():
                figures.crashes += 1
                figures.notes.append(f"died before {topic}: exit codes {bench.stop()}")
                bench.start(target)
            before_mb = bench.rss_mb()
            fuzz_topic(bench, gen, node, topic, type_name, args.per_endpoint, share(), seeds[topic], figures)
            note_growth(figures, topic, before_mb, bench.rss_mb())
        for service, type_name in services:
            if not bench.alive():
                figures.crashes += 1
                figures.notes.append(f"died before {service}: exit codes {bench.stop()}")
                bench.start(target)
            before_mb = bench.rss_mb()
            fuzz_service(bench, gen, service, type_name, args.per_endpoint, share(), figures)
            note_growth(figures, service, before_mb, bench.rss_mb())
        bench.spin_until(lambda: False, 1.0)
        if not bench.alive():
            figures.crashes += 1
            figures.notes.append(f"died during the fuzz: exit codes {[p.poll() for p in bench.processes]}")
            bench.stop()
            bench.start(target)
        names = set(target.nodes)
        figures.errors_answered += sum(1 for m in bench.logged[first_log:]
                                       if m.name.rsplit(".", 1)[-1] in names and m.level >= Log.WARN)
        try:
            answer = target.probe(bench)
            if answer != reference:
                figures.wrong_answers += 1
                figures.notes.append(f"the probe answered {answer!r:.80} after the fuzz, {reference!r:.80} before")
        except ProbeFailed as err:
            figures.hangs += 1
            figures.notes.append(f"after the fuzz: {err}")
        figures.rss_after_mb = bench.rss_mb()
        codes = bench.stop()
        if any(code not in (0, -signal.SIGINT) for code in codes):
            figures.notes.append(f"exit codes after SIGINT: {codes}")
    except ProbeFailed as err:
        figures.hangs += 1
        figures.notes.append(f"before the fuzz: {err}")
    finally:
        bench.close()
        figures.notes += bench.over_memory
        figures.seconds = time.monotonic() - started
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-endpoint", type=int, default=1000, help="messages per subscription or service")
    parser.add_argument("--seconds", type=float, default=300.0, help="time bound per target, s")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once, each in its own process")
    parser.add_argument("--max-rss-mb", type=float, default=4000.0,
                        help="a target process larger than this is killed (and counted as a crash)")
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--log", type=pathlib.Path, help="where the nodes' output goes (default: a temp file)")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    with tempfile.TemporaryDirectory(prefix="edge_lam_fuzz_") as tmp:
        work = pathlib.Path(tmp)
        chosen = [t for t in targets(work) if not args.targets or t.name in args.targets.split(",")]
        log_path = args.log or work / "nodes.log"
        if args.jobs > 1 and len(chosen) > 1:
            results = in_parallel(args, [t.name for t in chosen], work, log_path)
        else:
            if any(t.name == "trainers" for t in chosen):
                tiny_model(work / "tiny")
            results = []
            with open(log_path, "a") as log:
                for target in chosen:
                    figures = run_target(target, args, work, log)
                    results.append(figures)
                    print(f"{figures.target:17s} sent {figures.sent:6d} crashes {figures.crashes} "
                          f"hangs {figures.hangs} ({figures.seconds:.0f} s)", flush=True)
        print_table(results)
        summary = {"messages_sent": sum(f.sent for f in results), "crashes": sum(f.crashes for f in results),
                   "hangs": sum(f.hangs for f in results), "wrong_answers": sum(f.wrong_answers for f in results),
                   "per_endpoint": args.per_endpoint, "seed": args.seed,
                   "fewest_per_endpoint": min(f.fewest_sent for f in results),
                   "targets": [f.__dict__ for f in results]}
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        if any(f.crashes or f.hangs or f.wrong_answers for f in results):
            print(f"nodes' output: {log_path}" if args.log else "rerun with --log PATH to keep the nodes' output")
    return 1 if summary["crashes"] or summary["hangs"] or summary["wrong_answers"] else 0


def in_parallel(args, names: list[str], work: pathlib.Path, log_path: pathlib.Path) -> list[Figures]:
    """Run the targets in ``args.jobs`` processes of this script at once (a shorter run on a machine with cores to
    spare), each on a share of the targets, and gather their figures."""
    shares = [names[i::args.jobs] for i in range(args.jobs)]
    runs = []
    for index, share in enumerate(s for s in shares if s):
        out = work / f"part{index}.json"
        command = [sys.executable, __file__, "--targets", ",".join(share), "--per-endpoint", str(args.per_endpoint),
                   "--seconds", str(args.seconds), "--seed", str(args.seed), "--max-rss-mb", str(args.max_rss_mb),
                   "--json", str(out), "--log", str(log_path.with_suffix(f".{index}.log"))]
        runs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), out))
    results = []
    try:
        for process, out in runs:
            process.wait()
            if not out.exists():
                raise SystemExit(f"a part of the fuzz ended with {process.returncode} and no figures")
            results += [Figures(**t) for t in json.loads(out.read_text())["targets"]]
    finally:
        stop_processes([process for process, _ in runs], grace_s=30.0)  # each part stops its own targets
    return results


def print_table(results: list[Figures]) -> None:
    header = (f"{'target':17s} {'endpoints':>9s} {'sent':>7s} {'crashes':>7s} {'hangs':>5s} {'wrong':>5s} "
              f"{'errors':>7s} {'unanswered':>10s} {'RSS before':>10s} {'RSS after':>9s} {'s':>5s}")
    print(header)
    print("-" * len(header))
    for f in results:
        print(f"{f.target:17s} {f.endpoints:9d} {f.sent:7d} {f.crashes:7d} {f.hangs:5d} {f.wrong_answers:5d} "
              f"{f.errors_answered:7d} {f.unanswered_calls:10d} {f.rss_before_mb:8.0f}MB {f.rss_after_mb:7.0f}MB "
              f"{f.seconds:5.0f}")
        for note in f.notes:
            print(f"    {note}")
    fewest = min(results, key=lambda f: f.fewest_sent)
    print(f"total: {sum(f.sent for f in results)} messages, {sum(f.crashes for f in results)} crashes, "
          f"{sum(f.hangs for f in results)} hangs, {sum(f.wrong_answers for f in results)} wrong answers; fewest to "
          f"one endpoint {fewest.fewest_sent} ({fewest.fewest_at})")


if __name__ == "__main__":
    sys.exit(main())
