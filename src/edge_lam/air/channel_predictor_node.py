"""Channel predictor node: ``edge_lam_msgs/ChannelState`` windows on ``csi`` to one ``ChannelPrediction`` each on
``csi/prediction``: the next slots' channel from the chosen predictor and the best beams of a DFT codebook for it.

The predictor (``last``, ``ar``, ``gru`` or ``lam``) is loaded once at start by ``air.predictors.load_predictor``;
a file that is missing or holds another kind ends the node at once with a log line and exit status 1. Input and
output are reliable keep-last 100, so a replayed bag loses no window. A malformed window, or one shorter than the
predictor's ``past``, is logged and dropped; the node goes on.
"""

from __future__ import annotations

import array
import collections
import pathlib
import time

from edge_lam_msgs.msg import ChannelPrediction, ChannelState
from rclpy.node import Node
from rclpy.timer import Timer

from edge_lam.air.predictors import ChannelPredictor, load_predictor, predictor_kind
from edge_lam.air.window_prediction import codebook, predict_window
from edge_lam.encoders.encoder_node import LATENCY_WINDOW, latency_summary, rejection_reason
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import PREDICTIONS, RELIABLE_SENSOR_DATA
from edge_lam.wire.csi import CsiWindow, from_channel_state, to_channel_state
from edge_lam.wire.stamps import from_ns, to_ns, to_seconds

KINDS = ("last", "ar", "gru", "lam")


class ChannelPredictorNode(Node):
    def __init__(self, node_name: str = "channel_predictor", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        kind = declare(self, "predictor", "last", f"Channel predictor: {', '.join(KINDS)}.")
        model_path = declare(self, "model_path", "",
                             "The saved predictor (safetensors) for ar, gru and lam; unused for last.")
        self.oversample = declare(self, "codebook_oversample", 2,
                                  "Oversampling of the DFT beam codebook (oversample x antennas beams).",
                                  low=1, high=64, on_change=lambda v: setattr(self, "oversample", v))
        self.top_k = declare(self, "top_k", 3, "Beams ranked in each prediction, best first.",
                             low=1, high=4096, on_change=lambda v: setattr(self, "top_k", v))
        threads = declare(self, "threads", 1, "Torch intra-op threads of the predictor.", low=1, high=256)
        stats_period_s = declare(self, "stats_period_s", 10.0,
                                 "Seconds between log lines with window counts and latency; 0 turns them off.",
                                 on_change=self._start_stats, low=0.0)
        self.predictor = self._load(kind, model_path, threads)
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.published = 0
        self.rejected = 0
        self._publisher = self.create_publisher(ChannelPrediction, "csi/prediction", PREDICTIONS)
        self.create_subscription(ChannelState, "csi", self.predict, RELIABLE_SENSOR_DATA)
        self._stats_timer: Timer | None = None
        self._start_stats(stats_period_s)
        self.get_logger().info(
            f"{self.predictor.name} predictor ({self.predictor.past} past -> {self.predictor.future} future slots): "
            f"windows on {self.resolve_topic_name('csi')}, predictions on {self._publisher.topic_name}")

    def _load(self, kind: str, model_path: str, threads: int) -> ChannelPredictor:
        """The predictor, or the process's end with a log line (a startup failure, not a bug: no traceback)."""
        try:
            if kind not in KINDS:
                raise ValueError(f"unknown predictor; one of {', '.join(KINDS)}")
            path = pathlib.Path(model_path) if model_path else None
            if kind != "last" and path is not None:
                predictor_kind(path)  # a missing or foreign file fails here, before torch's import (seconds)
            import torch  # the ar, gru and lam predictors run on torch: its threads are set before one is built

            torch.set_num_threads(threads)
            return load_predictor(kind, path)
        except Exception as err:
            where = f" from '{model_path}'" if model_path else ""
            self.get_logger().fatal(f"cannot load the {kind} predictor{where}: {type(err).__name__}: {err}")
            raise SystemExit(1) from None

    def _start_stats(self, period_s: float) -> None:
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None
        if period_s > 0:
            self._stats_timer = self.create_timer(period_s, self.log_stats)

    def predict(self, msg: ChannelState) -> None:
        started = time.perf_counter()
        try:
            window = from_channel_state(msg)
            answer = predict_window(self.predictor, window.h, self.oversample, self.top_k)
            first_ns = to_ns(msg.header.stamp) + round(window.period_s * 1e9)
            predicted = to_channel_state(CsiWindow(answer.predicted, window.link_id, window.carrier_hz,
                                                   window.subcarrier_spacing_hz, window.period_s))
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject(err, msg)
            return
        predicted.header.stamp = from_ns(first_ns)
        predicted.header.frame_id = msg.header.frame_id
        out = ChannelPrediction(header=msg.header, link_id=window.link_id, predictor=self.predictor.name,
                                predicted=predicted, beam=int(answer.top_beams[0]),
                                codebook_size=len(codebook(window.h.shape[1], self.oversample)),
                                codebook_oversample=self.oversample, seq=self.published)
        out.top_beams = array.array("I", answer.top_beams.astype("<u4").tobytes())
        out.top_gains = array.array("f", answer.top_gains.astype("<f4").tobytes())
        out.predict_seconds = time.perf_counter() - started
        self._publisher.publish(out)
        self.published += 1
        self.latencies_s.append(time.perf_counter() - started)

    def reject(self, error: Exception, msg: ChannelState) -> None:
        self.rejected += 1
        self.get_logger().error(f"rejected CSI window stamped {to_seconds(msg.header.stamp):.9f} "
                                f"({self.rejected} so far): {rejection_reason(error)}")

    def log_stats(self) -> None:
        if not self.latencies_s:
            self.get_logger().info(f"no predictions yet ({self.rejected} windows rejected)")
            return
        self.get_logger().info(
            f"{self.published + self.rejected} CSI windows, {self.published} predictions, {self.rejected} rejected; "
            f"{latency_summary(self.latencies_s)}"
        )


def main(args: list[str] | None = None) -> None:
    spin_node(ChannelPredictorNode, args)
