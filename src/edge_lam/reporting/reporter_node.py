"""Reporter node: the newest semantic tokens of each modality, verbalised, sent to the LAM every few seconds.

Subscribes ``tokens/<modality>`` and the latched ``tokens/<modality>/vocabulary`` for each configured modality,
sends an InferenceRequest to the gateway every ``period_s`` when there is something new, and publishes each answer
as a ``Report`` on ``reports``, with where its time went (encoding, each module, transfer), and logs it. One request
is in flight at a time: a tick that finds the previous one unanswered is skipped and logged, so a slow model does
not build a backlog; a request unanswered after ``answer_timeout_s`` is given up (logged) so that a lost gateway
does not stop reports for good.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from edge_lam_msgs.msg import InferenceRequest, InferenceResult, Report, SemanticTokens
from edge_lam_msgs.msg import Vocabulary as VocabularyMsg
from rclpy.node import Node

from edge_lam.chain.requests import Options, Request
from edge_lam.encoders.tokens import Vocabulary
from edge_lam.reporting.timings import report_timings
from edge_lam.reporting.verbalize import DEFAULT_INSTRUCTION, Observation, report_prompt
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import CONTROL, TOKENS, VOCABULARIES
from edge_lam.wire.chain import from_stage_msgs
from edge_lam.wire.reports import to_report_msg
from edge_lam.wire.requests import to_request_msg
from edge_lam.wire.tokens import from_semantic_tokens, from_vocabulary_msg


@dataclass
class Pending:
    """The request in flight, with what the report will say about where it came from."""

    request: Request
    sent: float
    robot_id: str
    sources: list[str]
    encode_s: dict[str, float]
    chunks: list[str] = field(default_factory=list)


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
        self._adapter = declare(self, "adapter", "", "LoRA adapter the reports are asked with (the shards' adapters "
                                "name it); empty: none, the base model.")
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
        self._pending: Pending | None = None
        self._unavailable_since: float | None = None  # since when every answer says the chain is not serving
        for modality in modalities:
            self.create_subscription(SemanticTokens, f"tokens/{modality}", self.remember, TOKENS)
            self.create_subscription(VocabularyMsg, f"tokens/{modality}/vocabulary", self.learn, VOCABULARIES)
        self._requests = self.create_publisher(InferenceRequest, requests, CONTROL)
        self._reports = self.create_publisher(Report, "reports", CONTROL)
        self._results = self.create_subscription(InferenceResult, results, self.collect, CONTROL)
        self.create_timer(period_s, self.ask)
        self.get_logger().info(f"reporting on {', '.join(modalities)} every {period_s:g} s via {requests}")

    def log_failure(self, msg: InferenceResult) -> None:
        """A chain that is not serving yet (at start, or while a new plan loads) is told once as a warning; it is an
        error only once it has lasted past ``answer_timeout_s``. Any other failure is an error at once."""
        if msg.error_code != InferenceResult.ERROR_MODULE_UNAVAILABLE:
            self.get_logger().error(f"{msg.request_id} failed ({msg.error_code}): {msg.error_message}")
            return
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
            self.get_logger().warning(f"the chain is not serving yet ({msg.error_message}); asking again")
        elif now - self._unavailable_since > self._answer_timeout_s:
            self.get_logger().error(f"the chain has not served for {now - self._unavailable_since:.0f} s: "
                                    f"{msg.error_message}", throttle_duration_sec=self._answer_timeout_s)

    def learn(self, msg: VocabularyMsg) -> None:
        self._vocabularies[(msg.encoder, msg.encoder_version)] = from_vocabulary_msg(msg)

    def remember(self, msg: SemanticTokens) -> None:
        self._newest[(msg.modality, msg.sensor)] = (time.monotonic(), msg)

    def observations(self) -> list[tuple[Observation, SemanticTokens]]:
        """The newest tokens of each sensor that are recent enough and whose vocabulary is known."""
        now, found = time.monotonic(), []
        for (modality, sensor), (received, msg) in self._newest.items():
            vocabulary = self._vocabularies.get((msg.encoder, msg.encoder_version))
            if now - received > self._max_age_s or vocabulary is None:
                continue
            found.append((Observation(modality, sensor, from_semantic_tokens(msg), vocabulary), msg))
        return found

    def ask(self) -> None:
        newest = max((received for received, _ in self._newest.values()), default=0.0)
        if newest <= self._reported_up_to:
            return
        if self._pending is not None and time.monotonic() - self._pending.sent > self._answer_timeout_s:
            request_id = self._pending.request.request_id
            self.get_logger().error(f"{request_id} got no answer in {self._answer_timeout_s:g} s; giving up")
            self._pending, self._reported_up_to = None, 0.0
        if self._pending is not None:
            self.get_logger().warning(f"skipped a report: {self._pending.request.request_id} is still being answered")
            return
        found = self.observations()
        if not found:
            return
        if not self.gateway_listening():  # a request now would be lost, or given up only after answer_timeout_s
            self.get_logger().warning(f"no gateway on {self._requests.topic_name} yet; waiting",
                                      throttle_duration_sec=30.0)
            return
        request = Request(f"report-{uuid.uuid4().hex[:8]}",
                          prompt=report_prompt([observation for observation, _ in found], self._instruction),
                          options=Options(max_new_tokens=self._max_new_tokens, adapter=self._adapter))
        encode_s: dict[str, float] = {}
        for _, msg in found:
            encode_s[msg.modality] = max(encode_s.get(msg.modality, 0.0), msg.encode_seconds)
        self._pending = Pending(request, time.monotonic(), found[0][1].robot_id,
                                sorted(f"{o.modality}/{o.sensor}" for o, _ in found), encode_s)
        self._reported_up_to = newest
        self._requests.publish(to_request_msg(request, self.get_clock().now().to_msg()))

    def gateway_listening(self) -> bool:
        """A node that reads the requests topic and writes the results topic is there: a gateway. Any reader of the
        requests alone (``ros2 topic echo``, a recorder) answers nothing."""
        readers = {(i.node_namespace, i.node_name) for i in
                   self.get_subscriptions_info_by_topic(self._requests.topic_name)}
        writers = {(i.node_namespace, i.node_name) for i in
                   self.get_publishers_info_by_topic(self._results.topic_name)}
        return bool(readers & writers)

    def collect(self, msg: InferenceResult) -> None:
        pending = self._pending
        if pending is None or msg.request_id != pending.request.request_id:
            return
        pending.chunks.append(msg.text)
        if not msg.final:
            return
        self._pending = None
        latency_s = time.monotonic() - pending.sent
        text = "" if msg.error_code else "".join(pending.chunks).strip()
        if msg.error_code:
            self.log_failure(msg)
            self._reported_up_to = 0.0  # ask again at the next tick, with whatever is newest then
        else:
            self._unavailable_since = None
            self.get_logger().info(f"report after {latency_s:.2f} s: {text}")
        self._reports.publish(to_report_msg(
            robot_id=pending.robot_id, request_id=msg.request_id, prompt=pending.request.prompt,
            sources=pending.sources, text=text, error_code=msg.error_code, error_message=msg.error_message,
            latency_s=latency_s, stages=report_timings(pending.encode_s, from_stage_msgs(msg.timings), latency_s),
            stamp=self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> None:
    spin_node(ReporterNode, args)
