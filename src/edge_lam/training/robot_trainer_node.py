"""A robot's side of collaborative fine-tuning: the bottom of the model on its own share of the domain set.

The robot holds the token embedding and decoder layers ``[0, cut_layer)`` (frozen, with LoRA adapters). It waits
for the edge's latched global adapter (``training/global_adapter``), loads it, and trains ``steps_per_round``
steps: each sends the activation at the cut with the batch's answer targets up (``training/activations``) and
trains on the gradient that comes down (``training/gradients``, only those addressed to this robot: a content
filter on ``header.frame_id`` keeps the others off its link). Then it sends its adapter update, trained minus
the global adapter it started from, with the number of its training pairs (``training/adapters``) and waits for
the next global adapter, which starts the next round; the one whose ``round`` equals ``rounds`` ends the run.
A robot that starts late simply begins with the latched adapter of the round in progress; one that is still
training when a newer global adapter arrives drops its round and follows.

The protocol and message layout are described in :mod:`edge_lam.training.edge_trainer_node`. An activation
unanswered after ``reply_timeout_s`` is sent again; when the edge has sent nothing this robot waits for in
``edge_timeout_s``, the robot gives up (logged). The robot logs every message's size in its own byte ledger and
writes it to ``ledger_path`` after every round and at the end, where ``main`` returns (exit status 1 if it gave
up).
"""

from __future__ import annotations

import pathlib
import re
import time

import numpy as np
import rclpy
import torch
from edge_lam_msgs.msg import TensorList
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.subscription_content_filter_options import ContentFilterOptions
from rclpy.task import Future

from edge_lam.assets import evo_bags_dir
from edge_lam.model.decompose import describe
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.ros.main import end_process, spin_logging_failures
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import LATCHED, TENSORS
from edge_lam.ros.trust import declare_trust
from edge_lam.training.compression import ErrorFeedback
from edge_lam.training.domain_data import batch_stream, build_domain_set, make_batch
from edge_lam.training.ledger import ByteLedger
from edge_lam.training.split import SplitBottom
from edge_lam.training.split_parameters import declare_codec, declare_split
from edge_lam.wire.training import BadMessage, decode_state, decode_stream, encode_state, pack, unpack

BAG = "nav2_turtlebot.mcap"  # the bundled TurtleBot run (evo's test data)
TICK_S = 0.1  # how often held messages are retried and waits checked
EDGE = "edge"  # the other end in this robot's ledger
MAX_ADAPTER_WEIGHT = 100.0  # LoRA weights stay far below 1; a global adapter of 1e30 overflows the first forward


class RobotTrainerNode(Node):
    """Trains the bottom adapters on this robot's data, the edge training the top; ``done`` completes at the end."""

    def __init__(self, node_name: str = "robot_trainer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        split = self._split = declare_split(self)
        self._activation_codec = declare_codec(self, "activation_codec", "int8", "the activations sent up")
        codec = declare_codec(self, "adapter_codec", "fp16", "the adapter update sent up")
        feedback = declare(self, "error_feedback", True,
                           "Add what the last adapter update lost in compression to the next (per weight).")
        self._steps = declare(self, "steps_per_round", 4, "Training steps (batches) per round.")
        batch_size = declare(self, "batch_size", 8, "Question/answer pairs per step.")
        seed = declare(self, "seed", 0, "Seed of the order of this robot's batches.")
        robot_id = declare(self, "robot_id", "", "Name in messages and ledgers ([A-Za-z0-9_]); empty: the node's.")
        robot_index = declare(self, "robot_index", 0, "Which share of the domain set is this robot's: 0..robots-1.")
        robots = declare(self, "robots", 1, "How many shares the domain set is cut into (by time range of the run).")
        bag = declare(self, "bag", "", "rosbag2 with nav_msgs/Odometry on /odom for the domain set; empty: the "
                                       "bundled TurtleBot run.")
        self._trust = declare_trust(self, "forge the global adapter or the gradients and change or end what this "
                                    "robot learns")
        self._ledger_path = declare(self, "ledger_path", "", "JSON file of this robot's byte ledger; empty: none.")
        self._reply_timeout_s = declare(self, "reply_timeout_s", 10.0,
                                        "Send an activation again when no gradient came back in this long, s.",
                                        on_change=lambda value: setattr(self, "_reply_timeout_s", value), low=1e-3)
        self._edge_timeout_s = declare(self, "edge_timeout_s", 300.0,
                                       "Give up when the edge sent nothing awaited (adapter, gradient) this long, s.",
                                       on_change=lambda value: setattr(self, "_edge_timeout_s", value), low=1e-3)
        self._max_weight = declare(
            self, "max_adapter_weight", MAX_ADAPTER_WEIGHT,
            "Largest magnitude a global adapter's weights may have; an adapter with a larger one is ignored.",
            on_change=lambda value: setattr(self, "_max_weight", value), low=0.0)
        self._robot = robot_id or self.get_name()
        if not re.fullmatch(r"[A-Za-z0-9_]+", self._robot):
            raise ValueError(f"robot_id '{self._robot}' must be letters, digits and underscores")
        if not 0 <= robot_index < robots or self._steps < 1 or batch_size < 1:
            raise ValueError("need 0 <= robot_index < robots and steps_per_round, batch_size >= 1")
        if self._reply_timeout_s <= 0 or self._edge_timeout_s <= 0:
            raise ValueError("reply_timeout_s and edge_timeout_s must be positive")
        torch.set_num_threads(split.num_threads)
        self._adapter_codec = ErrorFeedback(codec) if feedback else codec
        self._tokenizer = load_tokenizer(split.model)
        domain = build_domain_set(pathlib.Path(bag) if bag else evo_bags_dir() / BAG)
        share = domain.robot_shares(robots)[robot_index]
        self._samples = len(share)
        self._batches = batch_stream(share, batch_size, seed)
        self._bottom = SplitBottom(describe(load_model(split.model)), split.cut_layer, split.lora,
                                   lr=split.learning_rate)
        self._shapes = {name: tuple(t.shape) for name, t in self._bottom.trainable_state().items()}
        self._base: dict[str, torch.Tensor] = {}  # the global adapter this round started from
        self._ledger = ByteLedger()
        self.done = Future()
        self._round, self._rounds_total, self._step = -1, 0, 0
        self._waiting = "adapter"  # adapter, gradient or done
        self._waiting_since = time.monotonic()
        self._outbox: tuple[Publisher, TensorList, int, str] | None = None
        self._sent_at = 0.0
        self._activation_shape: tuple[int, ...] = ()
        self._last_activation: tuple[TensorList, int] = (TensorList(), 0)
        self._losses: list[float] = []

        self._activations = self.create_publisher(TensorList, split.activations_topic, TENSORS)
        self._adapters = self.create_publisher(TensorList, split.adapters_topic, TENSORS)
        self._gradient_sub = self.create_subscription(
            TensorList, split.gradients_topic, self.on_gradient, TENSORS,
            content_filter_options=ContentFilterOptions("header.frame_id = %0", [f"'{self._robot}'"]))
        self._global_channel = self.create_subscription(TensorList, split.global_adapter_topic,
                                                        self.on_global_adapter, LATCHED).topic_name
        self.create_timer(TICK_S, self.tick)
        self._run = {**split.record(), "robot_id": self._robot, "robot_index": robot_index, "robots": robots,
                     "samples": self._samples, "steps_per_round": self._steps,
                     "batch_size": batch_size, "activation_codec": self._activation_codec.spec,
                     "adapter_codec": codec.spec, "error_feedback": feedback, "seed": seed}
        self.get_logger().info(
            f"robot '{self._robot}': layers [0, {split.cut_layer}) of {split.model}, share {robot_index}/{robots} "
            f"({self._samples} pairs); waiting for the global adapter on {split.global_adapter_topic}")

    # -- rounds --------------------------------------------------------------------------------------------------

    def on_global_adapter(self, msg: TensorList) -> None:
        # Latched: the edge's last adapter may be old when this robot joins, so only the future is bounded.
        if self.done.done() or not self._trust.accept(msg, self._global_channel, max_age=False):
            return
        try:
            got = unpack(msg, ("round", "rounds"))
            state = decode_state(got.arrays, self._shapes, self._max_weight)
        except BadMessage as err:
            self.get_logger().error(f"global adapter: {err} (does the edge use the same model, cut and LoRA?)")
            return
        round_ = got.fields["round"]
        if round_ <= self._round:
            if round_ < self._round:
                self.get_logger().warning(f"global adapter of round {round_} is older than round {self._round}")
            return
        self._ledger.record(max(round_ - 1, 0), "down", EDGE, self._robot, "global_adapter", got.nbytes)
        if self._waiting == "gradient":
            self.get_logger().warning(f"round {self._round} closed without this robot's update; following")
        before = (self._bottom.trainable_state(), self._bottom.pending, self._activation_shape, self._base,
                  self._round, self._rounds_total, self._step, self._losses, self._waiting, self._waiting_since)
        self._bottom.load_trainable_state(state)
        self._base = state
        self._round, self._rounds_total, self._step, self._losses = round_, got.fields["rounds"], 0, []
        try:
            if round_ < self._rounds_total:
                self.send_activation()
        except Exception as err:  # bounded weights can still overflow the forward pass: keep what trained so far
            trained, pending, self._activation_shape, self._base, self._round, self._rounds_total, self._step, \
                self._losses, self._waiting, self._waiting_since = before
            self._bottom.load_trainable_state(trained)
            self._bottom.pending = pending  # the activation in flight still gets its gradient
            self.get_logger().error(f"global adapter of round {round_} ignored: training from it fails "
                                    f"({type(err).__name__}: {err})")
            return
        l1 = sum(float(t.double().abs().sum()) for t in state.values())
        self.get_logger().info(f"loaded the global adapter of round {round_}: {len(state)} tensors, L1 {l1:.9e}")
        if round_ >= self._rounds_total:
            self.finish(True, f"the run's {self._rounds_total} rounds are over")

    def send_activation(self) -> None:
        batch = make_batch(next(self._batches), self._tokenizer)
        activation = self._bottom.forward(batch.input_ids)
        self._activation_shape = tuple(activation.shape)
        arrays = {**self._activation_codec.encode(activation).wire("activation"),
                  "targets": batch.targets.to(torch.int32).numpy()}
        fields = {"round": self._round, "step": self._step, "cut": self._split.cut_layer}
        msg, nbytes = pack(self._robot, fields, arrays, self.get_clock().now().to_msg(), self._trust.signer)
        self._last_activation = (msg, nbytes)
        self._wait("gradient")
        self._send(self._activations, msg, nbytes, "activation")

    def on_gradient(self, msg: TensorList) -> None:
        if msg.header.frame_id != self._robot or self.done.done():
            return  # another robot's (only where the content filter is not applied)
        if not self._trust.accept(msg, self._gradient_sub.topic_name):
            return
        try:
            got = unpack(msg, ("round", "step"))
        except BadMessage as err:
            self.get_logger().error(f"gradient: {err}")
            return
        self._ledger.record(max(got.fields["round"], 0), "down", EDGE, self._robot, "gradient", got.nbytes)
        where = (got.fields["round"], got.fields["step"])
        if self._waiting != "gradient" or where != (self._round, self._step):
            self.get_logger().warning(f"gradient for round {where[0]} step {where[1]} is not awaited: dropped")
            return
        try:
            self._bottom.backward(decode_stream(got.arrays, "gradient", self._activation_shape))
        except (BadMessage, ValueError, RuntimeError) as err:
            self.get_logger().error(f"gradient for round {where[0]} step {where[1]}: {err}")
            return
        if "loss" in got.arrays and got.arrays["loss"].size == 1:
            self._losses.append(float(got.arrays["loss"].reshape(-1)[0]))
        self._step += 1
        try:
            if self._step < self._steps:
                self.send_activation()
            else:
                self.send_update()
        except Exception as err:  # e.g. weights a step made non-finite: logged; the edge's time-out ends the round
            self.get_logger().error(f"round {self._round} step {self._step}: cannot send ({type(err).__name__}: "
                                    f"{err})")

    def send_update(self) -> None:
        trained = self._bottom.trainable_state()
        update = {name: trained[name] - self._base[name] for name in self._shapes}
        msg, nbytes = pack(self._robot, {"round": self._round, "samples": self._samples, "cut": self._split.cut_layer},
                           encode_state(update, self._adapter_codec), self.get_clock().now().to_msg(),
                           self._trust.signer)
        self._wait("adapter")
        self._send(self._adapters, msg, nbytes, "adapter")
        loss = f"{np.mean(self._losses):.4f}" if self._losses else "unknown"
        self.get_logger().info(f"round {self._round}: {self._steps} steps, mean loss {loss}; update sent ({nbytes} B)")
        self.write_ledger()

    # -- sending, waiting, ending --------------------------------------------------------------------------------

    def _send(self, publisher: Publisher, msg: TensorList, nbytes: int, kind: str) -> None:
        """Publish now if the edge listens (and, for activations, can answer); else hold it for the next tick."""
        ready = publisher.get_subscription_count() > 0
        if publisher is self._activations:
            ready = ready and self._gradient_sub.get_publisher_count() > 0
        if not ready:
            self._outbox = (publisher, msg, nbytes, kind)
            return
        self._outbox = None
        publisher.publish(self._trust.sign(msg))  # signed afresh: a message sent again is no replay
        self._sent_at = time.monotonic()
        self._ledger.record(self._round, "up", self._robot, EDGE, kind, nbytes)

    def _wait(self, what: str) -> None:
        self._waiting, self._waiting_since = what, time.monotonic()

    def tick(self) -> None:
        if self.done.done():
            return
        now = time.monotonic()
        if now - self._waiting_since > self._edge_timeout_s:
            self.finish(False, f"no {self._waiting} from the edge in {self._edge_timeout_s:g} s; giving up")
        elif self._outbox is not None:
            self._send(*self._outbox)
        elif self._waiting == "gradient" and now - self._sent_at > self._reply_timeout_s:
            self.get_logger().warning(f"no gradient for round {self._round} step {self._step} in "
                                      f"{self._reply_timeout_s:g} s; sending the activation again")
            # Unchanged: the edge answers a repeated (round, step) from its cache instead of training twice.
            self._send(self._activations, *self._last_activation, kind="activation")

    def finish(self, ok: bool, reason: str) -> None:
        self._waiting = "done"
        summary = self._ledger.summary()
        log = self.get_logger().info if ok else self.get_logger().error
        log(f"{reason}; {summary['total_bytes']} B in {summary['messages']} messages, per kind {summary['per_kind']}")
        self.write_ledger()
        self.done.set_result(ok)

    def write_ledger(self) -> None:
        if self._ledger_path:
            self._ledger.write_json(pathlib.Path(self._ledger_path), **self._run, side="robot",
                                    node=self.get_name(), round=self._round, finished=self._waiting == "done")


def main(args: list[str] | None = None) -> None:
    """Train until the run is done (status 0, or 1 when it failed) or Ctrl-C (0), then end as every executable
    does (``edge_lam.ros.main.end_process``)."""
    code = 0
    try:
        with rclpy.init(args=args), SingleThreadedExecutor() as executor:
            node = RobotTrainerNode()
            executor.add_node(node)
            try:
                spin_logging_failures(executor, node.get_logger(), until=node.done)
            finally:
                node.destroy_node()
            code = 1 if node.done.done() and not node.done.result() else 0
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    end_process(code)


if __name__ == "__main__":
    main()
