"""The edge's side of collaborative fine-tuning: the top of the model, the loss, and federated averaging.

The edge holds decoder layers ``[cut_layer, N)``, the final norm and the head (frozen, with LoRA adapters) and the
loss. It is one top shared by every robot (SplitFed): each robot's activations train it in the order they arrive,
so the top learns from the whole fleet's data and never travels; only the robots' bottom adapters are averaged.

Protocol (TensorLists, see :mod:`edge_lam.wire.training`; topics relative to the node's namespace):

- ``training/global_adapter`` (LATCHED, edge to robots): the bottom adapter every robot trains from, fields
  ``round`` (the round to train with it) and ``rounds`` (the run's length). Published at start (round 0, the
  initial adapter) and after each round's FedAvg; ``round == rounds`` is the final one. Late joiners get the last.
- ``training/activations`` (TENSORS, robot to edge): ``round``, ``step``, ``cut``, the ``activation`` stream and
  ``targets``. The edge trains its top on it and answers on ``training/gradients`` (TENSORS, frame_id = the
  robot): ``round``, ``step``, the ``gradient`` stream and the ``loss``. A repeated activation (a robot that got no
  answer in time) is answered again from a cache of each robot's last gradient, without training twice.
- ``training/adapters`` (TENSORS, robot to edge): ``round``, ``samples`` (the robot's local training pairs, FedAvg's
  weight), ``cut`` and one stream per adapter weight: the update (trained minus the round's global adapter).

A round closes when every robot heard from since the last one has sent its update and at least ``min_robots``
have, or ``round_timeout_s`` after its first update with whatever came (logged; a robot that missed it is not
waited for again until it is heard from). Messages for another round, of a wrong cut or malformed are logged
and dropped. Every message sent or received goes into the byte ledger; the ledger's JSON is rewritten after
every round.
"""

from __future__ import annotations

import pathlib
import time
from collections import defaultdict

import numpy as np
import torch
from edge_lam_msgs.msg import TensorList
from rclpy.node import Node

from edge_lam.model.adapters import save_adapter
from edge_lam.model.decompose import describe
from edge_lam.model.loading import load_model
from edge_lam.ros.bounds import Bounds
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import LATCHED, TENSORS
from edge_lam.ros.trust import declare_trust
from edge_lam.training.adapters import FederatedAdapters
from edge_lam.training.ledger import ByteLedger
from edge_lam.training.split import SplitBottom, SplitTop
from edge_lam.training.split_parameters import declare_codec, declare_split
from edge_lam.wire.training import BadMessage, Unpacked, decode_activation, decode_state, encode_state, pack, unpack

ROUND_CHECK_PERIOD_S = 0.5
MAX_TOKENS_PER_MESSAGE = 2048  # a robot's batch of 8 question/answer pairs takes a few hundred
MAX_ADAPTER_WEIGHT = 100.0  # LoRA weights and their updates stay far below 1; 1e30 overflows the first forward


class EdgeTrainerNode(Node):
    """Trains the shared top on the robots' activations and averages their bottom adapters each round."""

    def __init__(self, node_name: str = "edge_trainer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        split = self._split = declare_split(self)
        self._gradient_codec = declare_codec(self, "gradient_codec", "topk:0.1", "the gradients sent down")
        self._adapter_codec = declare_codec(self, "adapter_codec", "fp16", "the global adapter sent down")
        self._rounds_total = declare(self, "rounds", 3, "Federated rounds of the run.")
        self._min_robots = declare(self, "min_robots", 1, "Updates a round needs before it closes (or times out).")
        self._round_timeout_s = declare(self, "round_timeout_s", 120.0,
                                        "Close a round this long after its first update, with the updates it has.",
                                        on_change=lambda value: setattr(self, "_round_timeout_s", value), low=1e-3)
        self._max_tokens = declare(
            self, "max_tokens_per_message", MAX_TOKENS_PER_MESSAGE,
            "Most tokens (batch x length) one activation message may carry: the work and memory of one training "
            "step grow with them (attention with the length squared); larger messages are refused before decoding.",
            on_change=lambda value: setattr(self, "_max_tokens", value), low=1)
        self._max_weight = declare(
            self, "max_adapter_weight", MAX_ADAPTER_WEIGHT,
            "Largest magnitude an adapter update's weights may have; an update with a larger one is refused.",
            on_change=lambda value: setattr(self, "_max_weight", value), low=0.0)
        seed = declare(self, "seed", 0, "Seed of the initial adapters: the robots' (sent to them) and the top's.")
        self._trust = declare_trust(self, "send adapter updates and activations into a training round in any "
                                    "robot's name")
        self._ledger_path = declare(self, "ledger_path", "",
                                    "JSON file of the run's byte ledger, rewritten every round; empty: none.")
        self._adapter_path = declare(self, "adapter_path", "",
                                     "File for the final adapters of both halves (safetensors, with the LoRA settings; "
                                     "shards serve it: their `adapters`); empty: none.")
        if self._rounds_total < 1 or self._min_robots < 1 or self._round_timeout_s <= 0:
            raise ValueError("rounds and min_robots must be at least 1, round_timeout_s positive")
        torch.set_num_threads(split.num_threads)
        self._lora = split.lora
        arch = describe(load_model(split.model))
        self._hidden_size, self._vocab_size = arch.hidden_size, arch.model.config.vocab_size
        initial = SplitBottom(arch, self._split.cut_layer, self._lora, seed=seed).trainable_state()
        self._top = SplitTop(arch, self._split.cut_layer, self._lora, lr=split.learning_rate, seed=seed + 1)
        self._fed = FederatedAdapters(initial)
        self._shapes = {name: tuple(t.shape) for name, t in initial.items()}
        self._ledger = ByteLedger()
        self._expected: set[str] = set()  # robots the open round waits for
        self._served: set[str] = set()  # robots known to hold the current global adapter
        self._answered: dict[str, tuple[int, int, TensorList, int]] = {}  # robot -> its last gradient
        self._first_update: float | None = None
        self._losses: dict[int, list[float]] = defaultdict(list)
        self._samples: dict[int, dict[str, int]] = defaultdict(dict)
        self._global_bytes = 0

        self._gradients = self.create_publisher(TensorList, split.gradients_topic, TENSORS)
        self._global = self.create_publisher(TensorList, split.global_adapter_topic, LATCHED)
        self._activations_channel = self.create_subscription(TensorList, split.activations_topic,
                                                             self.on_activation, TENSORS).topic_name
        self._adapters_channel = self.create_subscription(TensorList, split.adapters_topic, self.on_adapter,
                                                          TENSORS).topic_name
        self.create_timer(ROUND_CHECK_PERIOD_S, self.check_round)
        self._last_tokens = 0  # of the last activation trained on: how close robots come to max_tokens_per_message
        Bounds(self).add("tokens_per_message", lambda: self._last_tokens, lambda: self._max_tokens)
        self._run = {**split.record(), "rounds": self._rounds_total,
                     "gradient_codec": self._gradient_codec.spec, "adapter_codec": self._adapter_codec.spec,
                     "seed": seed}
        self.publish_global()
        self.get_logger().info(
            f"top of {split.model}: layers [{split.cut_layer}, {arch.num_layers}) with LoRA r={split.lora.rank} on "
            f"{','.join(split.lora.target_modules)}; "
            f"{self._rounds_total} rounds, {len(initial)} adapter tensors per robot; activations on "
            f"{split.activations_topic}, global adapter on {self._global.topic_name}")

    @property
    def finished(self) -> bool:
        return self._fed.round >= self._rounds_total

    # -- split training ------------------------------------------------------------------------------------------

    def _received(self, msg: TensorList, kind: str, fields: tuple[str, ...]) -> Unpacked | None:
        """Unpack an upload and count its bytes in the ledger; None (logged) when it is malformed or unusable, or
        (trust on) not signed by the robot it names."""
        channel = self._activations_channel if kind == "activation" else self._adapters_channel
        if not self._trust.accept(msg, channel, identity=msg.header.frame_id):
            return None
        try:
            got = unpack(msg, fields)
        except BadMessage as err:
            self.get_logger().error(f"{kind} from '{msg.header.frame_id}': {err}")
            return None
        round_ = got.fields["round"]
        self._ledger.record(round_ if round_ >= 0 else 0, "up", got.robot, self.get_name(), kind, got.nbytes)
        return got if self._usable(got, kind) else None

    def on_activation(self, msg: TensorList) -> None:
        got = self._received(msg, "activation", ("round", "step", "cut"))
        if got is None:
            return
        robot, round_, step = got.robot, got.fields["round"], got.fields["step"]
        answered = self._answered.get(robot)
        if answered is not None and answered[:2] == (round_, step):  # the robot missed our answer: send it again
            self.get_logger().warning(f"'{robot}' repeated round {round_} step {step}: answering it again")
            self._send_gradient(robot, round_, answered[2], answered[3])
            return
        try:
            activation, targets = decode_activation(got.arrays, self._hidden_size, self._vocab_size, self._max_tokens)
            loss, grad = self._top.step(activation, targets)
            reply, nbytes = pack(robot, {"round": round_, "step": step},
                                 {**self._gradient_codec.encode(grad).wire("gradient"),
                                  "loss": np.array(loss, dtype=np.float32)}, self.get_clock().now().to_msg(),
                                 self._trust.signer)
        except (BadMessage, ValueError) as err:  # malformed, over a bound, or a step that would not be finite
            self.get_logger().error(f"activation from '{robot}' (round {round_}, step {step}): {err}")
            return
        except Exception as err:  # a bug or resource error must not end the run for every robot
            self.get_logger().error(f"activation from '{robot}': {type(err).__name__}: {err}")
            return
        self._heard(robot)
        self._last_tokens = targets.numel()
        self._losses[round_].append(loss)
        self._answered[robot] = (round_, step, reply, nbytes)
        self._send_gradient(robot, round_, reply, nbytes)

    def _usable(self, got: Unpacked, what: str) -> bool:
        """Whether a message names a robot, the open round and our cut; logs why not."""
        problem = ""
        if not got.robot:
            problem = "no robot id in header.frame_id"
        elif got.fields["cut"] != self._split.cut_layer:
            problem = f"cut {got.fields['cut']}, but this edge holds the top from layer {self._split.cut_layer}"
        elif self.finished:
            problem = f"the run's {self._rounds_total} rounds are over"
        elif got.fields["round"] != self._fed.round:
            problem = f"round {got.fields['round']} is not the open round {self._fed.round}"
        if problem:
            self.get_logger().error(f"{what} from '{got.robot}' dropped: {problem}")
        return not problem

    def _send_gradient(self, robot: str, round_: int, reply: TensorList, nbytes: int) -> None:
        self._gradients.publish(self._trust.sign(reply))  # signed afresh: a repeated answer is no replay
        self._ledger.record(round_, "down", self.get_name(), robot, "gradient", nbytes)

    # -- federated averaging -------------------------------------------------------------------------------------

    def on_adapter(self, msg: TensorList) -> None:
        got = self._received(msg, "adapter", ("round", "samples", "cut"))
        if got is None:
            return
        robot, round_ = got.robot, got.fields["round"]
        try:
            update = decode_state(got.arrays, self._shapes, self._max_weight)
            self._fed.contribute(robot, {n: self._fed.state[n] + update[n] for n in self._shapes},
                                 got.fields["samples"])
        except ValueError as err:  # BadMessage, or a layout or sample count the core refuses
            self.get_logger().error(f"adapter from '{robot}' (round {round_}): {err}")
            return
        except Exception as err:  # a bug or resource error must not end the run for every robot
            self.get_logger().error(f"adapter from '{robot}' (round {round_}): {type(err).__name__}: {err}")
            return
        self._heard(robot)
        self._samples[round_][robot] = got.fields["samples"]
        if self._first_update is None:
            self._first_update = time.monotonic()
        self.get_logger().info(f"round {round_}: update from '{robot}' ({got.fields['samples']} samples, "
                               f"{got.nbytes} B); have {sorted(self._fed.contributors)} of {sorted(self._expected)}")
        self.check_round()

    def _heard(self, robot: str) -> None:
        """A robot takes part in the open round; the first time, it must have got the current global adapter."""
        self._expected.add(robot)
        if robot not in self._served:
            self._served.add(robot)
            self._ledger.record(max(self._fed.round - 1, 0), "down", self.get_name(), robot, "global_adapter",
                                self._global_bytes)

    def check_round(self) -> None:
        """Close the open round when everyone expected has sent an update, or when it has waited long enough."""
        if self.finished or self._first_update is None:
            return
        have = set(self._fed.contributors)
        try:
            if self._expected <= have and len(have) >= self._min_robots:
                self.close_round()
            elif time.monotonic() - self._first_update > self._round_timeout_s:
                missing = sorted(self._expected - have)
                self.get_logger().warning(f"round {self._fed.round} timed out after {self._round_timeout_s:g} s: "
                                          f"averaging {sorted(have)} without {missing or 'the minimum'}")
                self.close_round()
        except Exception as err:  # e.g. the ledger's disk full: logged, and the run goes on
            self.get_logger().error(f"closing round {self._fed.round}: {type(err).__name__}: {err}")

    def close_round(self) -> None:
        closed, recipients = self._fed.round, set(self._fed.contributors)
        self._fed.finish_round()
        self._first_update = None
        losses = self._losses.get(closed, [])
        self.get_logger().info(
            f"round {closed} closed: FedAvg of {sorted(recipients)} ({self._samples[closed]} samples), top loss "
            f"{np.mean(losses) if losses else float('nan'):.4f} over {len(losses)} steps")
        self._expected, self._served = set(recipients), set(recipients)
        self.publish_global()
        for robot in sorted(recipients):
            self._ledger.record(closed, "down", self.get_name(), robot, "global_adapter", self._global_bytes)
        self.write_ledger()
        if self.finished:
            self.finish()

    def publish_global(self) -> None:
        """Send the global adapter as the robots will decode it, and make that the edge's state too, so that every
        update is taken against what the robots really started from."""
        arrays = encode_state(self._fed.state, self._adapter_codec)
        self._fed.state = decode_state(arrays, self._shapes)
        msg, self._global_bytes = pack("", {"round": self._fed.round, "rounds": self._rounds_total}, arrays,
                                       self.get_clock().now().to_msg(), self._trust.signer)
        self._global.publish(self._trust.sign(msg))

    def finish(self) -> None:
        summary = self._ledger.summary()
        self.get_logger().info(f"run finished after {self._rounds_total} rounds: {summary['total_bytes']} B in "
                               f"{summary['messages']} messages, per round {summary['per_round']}, per kind "
                               f"{summary['per_kind']}")
        if self._adapter_path:
            top = self._top.trainable_state()
            save_adapter(pathlib.Path(self._adapter_path), {**self._fed.state, **top}, self._lora, self._split.model)
            self.get_logger().info(f"adapters of both halves written to {self._adapter_path}")

    def write_ledger(self) -> None:
        if not self._ledger_path:
            return
        rounds = {str(r): {"samples": self._samples.get(r, {}), "top_loss_mean": float(np.mean(losses)),
                           "steps": len(losses)} for r, losses in sorted(self._losses.items())}
        self._ledger.write_json(pathlib.Path(self._ledger_path), **self._run, side="edge", node=self.get_name(),
                                rounds_done=self._fed.round, finished=self.finished, training=rounds)


def main(args: list[str] | None = None) -> None:
    spin_node(EdgeTrainerNode, args)


if __name__ == "__main__":
    main()
