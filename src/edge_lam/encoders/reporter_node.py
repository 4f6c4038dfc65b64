"""Reporter node: the newest semantic tokens of each modality, verbalised, sent to the LAM every few seconds.

Subscribes ``tokens/<modality>`` and the latched ``tokens/<modality>/vocabulary`` for each configured modality,
sends an InferenceRequest to the gateway every ``period_s`` when there is something new, and publishes each
finished answer on ``reports`` (and logs it with its latency). One request is in flight at a time: a tick that
finds the previous one unanswered is skipped and logged, so a slow model does not build a backlog; a request
unanswered after ``answer_timeout_s`` is given up (logged) so that a lost gateway does not stop reports for good.
"""

from __future__ import annotations

import time
import uuid

import rclpy
from edge_lam_msgs.msg import InferenceRequest, InferenceResult, SemanticTokens
from edge_lam_msgs.msg import Vocabulary as VocabularyMsg
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from std_msgs.msg import String

from edge_lam.encoders.token_messages import from_semantic_tokens, from_vocabulary_msg
from edge_lam.encoders.tokens import Vocabulary
from edge_lam.encoders.verbalize import DEFAULT_INSTRUCTION, Observation, report_prompt
from edge_lam.parameters import declare
from edge_lam.qos import CONTROL, TOKENS, VOCABULARIES


class ReporterNode(Node):
    def __init__(self, node_name: str = "reporter", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        modalities = declare(
            self, "modalities", ["image", "odometry", "scan"], "Modalities whose tokens/<modality> topics are read."
        )
        period_s = declare(self, "period_s", 5.0, "Seconds between reports.")
        self._max_age_s = declare(self, "max_age_s", 10.0, "Leave out tokens older than this (receive time), s.")
        self._max_new_tokens = declare(self, "max_new_tokens", 48, "Longest report, in tokens.")
        self._instruction = declare(self, "instruction", DEFAULT_INSTRUCTION, "What the model is asked to do.")
        self._answer_timeout_s = declare(
            self, "answer_timeout_s", 60.0, "Give up on a request that got no final answer after this long, s."
        )
        requests = declare(self, "requests_topic", "requests", "The gateway's InferenceRequest topic.")
        results = declare(self, "results_topic", "results", "The gateway's InferenceResult topic.")
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self._vocabularies: dict[tuple[str, str], Vocabulary] = {}
        self._newest: dict[tuple[str, str], tuple[float, SemanticTokens]] = {}
        self._reported_up_to = 0.0
        self._pending: tuple[str, float, list[str]] | None = None
        self.reports: list[str] = []
        for modality in modalities:
            self.create_subscription(SemanticTokens, f"tokens/{modality}", self.remember, TOKENS)
            self.create_subscription(VocabularyMsg, f"tokens/{modality}/vocabulary", self.learn, VOCABULARIES)
        self._requests = self.create_publisher(InferenceRequest, requests, CONTROL)
        self._reports = self.create_publisher(String, "reports", CONTROL)
        self.create_subscription(InferenceResult, results, self.collect, CONTROL)
        self.create_timer(period_s, self.ask)
        self.get_logger().info(f"reporting on {', '.join(modalities)} every {period_s:g} s via {requests}")

    def learn(self, msg: VocabularyMsg) -> None:
        self._vocabularies[(msg.encoder, msg.encoder_version)] = from_vocabulary_msg(msg)

    def remember(self, msg: SemanticTokens) -> None:
        self._newest[(msg.modality, msg.sensor)] = (time.monotonic(), msg)

    def observations(self) -> list[Observation]:
        """The newest tokens of each sensor that are recent enough and whose vocabulary is known."""
        now, found = time.monotonic(), []
        for (modality, sensor), (received, msg) in self._newest.items():
            vocabulary = self._vocabularies.get((msg.encoder, msg.encoder_version))
            if now - received > self._max_age_s or vocabulary is None:
                continue
            found.append(Observation(modality, sensor, from_semantic_tokens(msg), vocabulary))
        return found

    def ask(self) -> None:
        newest = max((received for received, _ in self._newest.values()), default=0.0)
        if newest <= self._reported_up_to:
            return
        if self._pending is not None and time.monotonic() - self._pending[1] > self._answer_timeout_s:
            self.get_logger().error(f"{self._pending[0]} got no answer in {self._answer_timeout_s:g} s; giving up")
            self._pending, self._reported_up_to = None, 0.0
        if self._pending is not None:
            self.get_logger().warning(f"skipped a report: {self._pending[0]} is still being answered")
            return
        observations = self.observations()
        if not observations:
            return
        request = InferenceRequest()
        request.header.stamp = self.get_clock().now().to_msg()
        request.request_id = f"report-{uuid.uuid4().hex[:8]}"
        request.prompt = report_prompt(observations, self._instruction)
        request.options.max_new_tokens = self._max_new_tokens
        self._pending = (request.request_id, time.monotonic(), [])
        self._reported_up_to = newest
        self._requests.publish(request)

    def collect(self, msg: InferenceResult) -> None:
        if self._pending is None or msg.request_id != self._pending[0]:
            return
        request_id, sent, chunks = self._pending
        chunks.append(msg.text)
        if not msg.final:
            return
        self._pending = None
        if msg.error_code:
            self.get_logger().error(f"{request_id} failed ({msg.error_code}): {msg.error_message}")
            self._reported_up_to = 0.0  # ask again at the next tick, with whatever is newest then
            return
        report = "".join(chunks).strip()
        self.reports.append(report)
        self._reports.publish(String(data=report))
        self.get_logger().info(f"report after {time.monotonic() - sent:.2f} s: {report}")


def main(args: list[str] | None = None) -> None:
    try:
        with rclpy.init(args=args):
            rclpy.spin(ReporterNode())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
