"""The inference gateway: takes InferenceRequests, drives prefill and token-by-token decoding through the chain,
and streams InferenceResult chunks back.

Requests come on a topic (results stream on another) or through the ``generate`` service for callers that wait.
Each request gets exactly one final result: the answer, or an error with its reason. A session whose caches a
shard lost is replayed once from its tokens; a session after any other failure is replayed on its next request.

The gateway serves only once a probe (a release packet for a throwaway session, which every module passes on) has
come back through the whole chain: a packet sent before every hop's writer has matched its reader would be lost.

Failover: when a step gets no answer in ``step_timeout_s`` (a module's host died) or a new placement plan arrives,
the gateway probes the chain again and, once a probe comes back, replays each request in flight from its tokens on
a fresh chain session (late packets of the old one are recognised and dropped), up to ``max_retries`` timeouts per
request. Requests that arrive meanwhile wait for the chain; any that waits longer than ``failover_timeout_s`` gets
an error. Every request still gets exactly one final result.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import rclpy
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult, PlacementPlan, StageTiming
from edge_lam_msgs.srv import Generate
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.task import Future
from transformers import AutoConfig, GenerationConfig

from edge_lam.chain.generation import Conversation, Limits, TextStream, check_request, prompt_ids
from edge_lam.model.loading import load_tokenizer, model_path
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import CONTROL, LATCHED, TENSORS
from edge_lam.wire.tensors import to_msg, to_numpy

Deliver = Callable[[InferenceResult], None]
PROBE_INTERVAL_S = 1.0  # how often to send a probe through the chain while it is not known to be connected


@dataclass
class SessionState:
    conversation: Conversation = field(default_factory=Conversation)
    keep: bool = False
    busy: bool = False
    needs_reset: bool = False
    attempt: int = 0  # chain sessions used so far; the chain knows this session as chain_session_id()
    last_used: float = field(default_factory=time.monotonic)
    pending: deque = field(default_factory=deque)

    def chain_session_id(self, session_id: str) -> str:
        return session_id if self.attempt == 0 else f"{session_id}~{self.attempt}"


@dataclass
class Job:
    request: InferenceRequest
    session_id: str
    deliver: Deliver
    stream: TextStream
    started: float = field(default_factory=time.monotonic)
    messages: list = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)   # ids sent in the current step, not yet in the caches
    step: int = 0
    chunks: int = 0
    sent_at: float = 0.0
    first_token_at: float | None = None
    replayed: bool = False
    retries: int = 0           # step timeouts survived by replaying
    waiting_since: float = 0.0  # waiting for the chain to be connected again before (re)sending; 0 when not
    module_seconds: dict = field(default_factory=lambda: defaultdict(float))


class GatewayNode(Node):
    """Serves requests for ``model`` over the chain between ``chain_input_topic`` and ``chain_output_topic``."""

    def __init__(self, node_name: str = "gateway", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._model = declare(self, "model", "smollm2-135m-instruct", "Model id or folder (tokenizer, chat template).")
        chain_in = declare(self, "chain_input_topic", "chain/input", "Topic of the chain's first module.")
        chain_out = declare(self, "chain_output_topic", "chain/output", "Topic the chain's last module publishes to.")
        requests = declare(self, "requests_topic", "requests", "InferenceRequest topic.")
        results = declare(self, "results_topic", "results", "InferenceResult topic (streamed chunks).")
        max_new = declare(self, "max_new_tokens_limit", 1024, "Largest max_new_tokens a request may ask for.")
        max_context = declare(self, "max_context_tokens", 2048, "Largest session length (prompt and answer), tokens.")
        self._step_timeout_s = declare(
            self, "step_timeout_s", 60.0,
            "A step with no answer after this long is retried on the chain as it is then (or fails, after "
            "max_retries).")
        self._failover_timeout_s = declare(
            self, "failover_timeout_s", 60.0,
            "How long a request waits for a chain that lost a module to be connected again before it fails.")
        self._max_retries = declare(self, "max_retries", 3, "Step timeouts a request survives by replaying.")
        plan_topic = declare(self, "plan_topic", "/edge_lam/plan",
                             "PlacementPlan topic: a new plan replays the requests in flight; empty to ignore plans.")
        self._idle_s = declare(self, "session_idle_timeout_s", 600.0, "Forget a kept session after this long unused.")

        path = model_path(self._model)
        config = AutoConfig.from_pretrained(path).get_text_config(decoder=True)
        self._tokenizer = load_tokenizer(self._model)
        eos = GenerationConfig.from_pretrained(path).eos_token_id
        self._eos = {self._tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self._limits = Limits(config.vocab_size, max_new, min(max_context, config.max_position_embeddings))

        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._sessions: dict[str, SessionState] = {}
        self._chain_ready = False
        self._ever_ready = False
        self._plan: tuple[str, int] | None = None
        self._probe_prefix = f"probe-{uuid.uuid4().hex[:8]}-"  # session ids of this gateway's probes
        self._probe_sent_at: float | None = None
        self._chain_in = self.create_publisher(ChainPacket, chain_in, TENSORS)
        self._chain_out = self.create_subscription(ChainPacket, chain_out, self.on_chain_output, TENSORS)
        self._results = self.create_publisher(InferenceResult, results, CONTROL)
        self._requests = self.create_subscription(InferenceRequest, requests, self.on_request, CONTROL)
        # A group of its own: a pending call keeps its group busy until it returns, which in the node's default
        # group would block the very chain output it waits for. Reentrant, so several calls can wait at once.
        self._service = self.create_service(Generate, "generate", self.on_generate,
                                            callback_group=ReentrantCallbackGroup())
        self._watchdog = self.create_timer(0.5, self.check_deadlines)
        if plan_topic:
            self.create_subscription(PlacementPlan, plan_topic, self.on_plan, LATCHED)
        self.get_logger().info(
            f"serving {self._model} through {self._chain_in.topic_name} -> {self._chain_out.topic_name}; "
            f"requests on {self._requests.topic_name}, results on {self._results.topic_name}, "
            f"service {self._service.srv_name}"
        )


    # -- requests in --------------------------------------------------------------------------------------------

    def on_request(self, request: InferenceRequest) -> None:
        self.submit(request, self._results.publish)

    async def on_generate(self, call: Generate.Request, response: Generate.Response) -> Generate.Response:
        # A coroutine, so waiting for the answer holds no executor thread: the watchdog guarantees a final chunk.
        chunks: list[InferenceResult] = []
        done = Future()

        def collect(chunk: InferenceResult) -> None:
            chunks.append(chunk)
            if chunk.final:
                done.set_result(True)

        try:
            self.submit(call.request, collect)
            await done
        except Exception as err:  # an exception in a coroutine would be swallowed and leave the caller hanging
            self.get_logger().error(f"request {call.request.request_id}: {type(err).__name__}: {err}")
            chunks.append(self._result(call.request, "", final=True,
                                       error=(InferenceResult.ERROR_INTERNAL, f"{type(err).__name__}: {err}")))
        response.result = _merge(chunks)
        return response

    def submit(self, request: InferenceRequest, deliver: Deliver) -> None:
        """Accept a request: answer at once if it is bad, else start it or queue it behind its session's."""
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        with self._lock:
            error = self._refuse(request)
            if error:
                self.get_logger().warning(f"request {request.request_id} refused: {error[1]}")
                deliver(self._result(request, "", final=True, error=error))
                return
            session_id = request.session_id or uuid.uuid4().hex
            session = self._sessions.setdefault(session_id, SessionState())
            session.keep = request.keep_session
            job = Job(request, session_id, deliver, TextStream(self._tokenizer, list(request.options.stop)))
            self._jobs[request.request_id] = job
            if session.busy:
                session.pending.append(job)
            else:
                self._start(job)

    def _refuse(self, request: InferenceRequest) -> tuple[int, str] | None:
        bad = InferenceResult.ERROR_BAD_REQUEST
        options = request.options
        reason = check_request(request.prompt, list(request.input_token_ids), options.max_new_tokens,
                               options.do_sample, options.temperature, options.top_p, self._limits)
        if reason:
            return bad, reason
        if request.model_id and request.model_id != self._model:
            return bad, f"this gateway serves '{self._model}', not '{request.model_id}'"
        if request.request_id in self._jobs:
            return bad, f"request_id '{request.request_id}' is already being answered"
        if request.session_id and request.session_id not in self._sessions:
            return InferenceResult.ERROR_UNKNOWN_SESSION, f"no session '{request.session_id}' (never made, or expired)"
        if not self._chain_ready and not self._ever_ready:
            return InferenceResult.ERROR_MODULE_UNAVAILABLE, "the chain is not connected end to end (yet)"
        return None

    def _start(self, job: Job) -> None:
        session = self._sessions[job.session_id]
        session.busy = True
        if not self._chain_ready:  # failing over: start once the chain is back
            job.waiting_since = time.monotonic()
            return
        request, conversation = job.request, session.conversation
        ids, job.messages = prompt_ids(self._tokenizer, conversation, request.prompt, list(request.input_token_ids),
                                       request.options.apply_chat_template)
        if len(ids) + request.options.max_new_tokens > self._limits.max_context_tokens:
            self._finish(job, "error", (InferenceResult.ERROR_BAD_REQUEST,
                                        f"{len(ids)} prompt tokens and {request.options.max_new_tokens} new ones "
                                        f"exceed the context of {self._limits.max_context_tokens}"))
            return
        held = conversation.tokens
        # Replay from the start when the caches may be stale, when the new tokens do not extend what they hold, or
        # when there is nothing new to feed (the last token's logits are not kept).
        if session.needs_reset or ids[:len(held)] != held or len(ids) == len(held):
            conversation.tokens = []
            self._send(job, ids, position=0, reset=True)
        else:
            self._send(job, ids[len(held):], position=len(held), reset=False)
        session.needs_reset = False

    def _send(self, job: Job, ids: list[int], position: int, reset: bool) -> None:
        job.in_flight = list(ids)
        chain_session = self._sessions[job.session_id].chain_session_id(job.session_id)
        packet = ChainPacket(request_id=job.request.request_id, session_id=chain_session, step=job.step,
                             position=position, reset=reset, options=job.request.options)
        packet.header.stamp = self.get_clock().now().to_msg()
        packet.tensors = [to_msg(np.asarray([ids], dtype=np.int64), "input_ids")]
        job.sent_at = time.monotonic()
        self._chain_in.publish(packet)

    # -- chain out ----------------------------------------------------------------------------------------------

    def on_chain_output(self, packet: ChainPacket) -> None:
        if packet.release:
            with self._lock:
                if packet.session_id.startswith(self._probe_prefix) and not self._chain_ready:
                    self._chain_ready = self._ever_ready = True
                    self.get_logger().info("the chain is connected end to end: serving")
                    self._resume()
            return
        with self._lock:
            job = self._jobs.get(packet.request_id)
            session = self._sessions.get(job.session_id) if job is not None else None
            if job is None or job.waiting_since or packet.step != job.step \
                    or packet.session_id != session.chain_session_id(job.session_id):
                self.get_logger().warning(
                    f"chain output for request '{packet.request_id}' step {packet.step} that is not awaited"
                    + (f": {packet.error_message}" if packet.error_code else "")
                )
                return
            if packet.error_code:
                self._chain_failed(job, packet)
                return
            for timing in packet.timings:
                job.module_seconds[(timing.stage, timing.host_id)] += timing.seconds
            tokens = {t.name: t for t in packet.tensors}
            if "next_token" not in tokens:
                self._finish(job, "error", (InferenceResult.ERROR_INTERNAL,
                                            f"the chain's last module sent {sorted(tokens)}, not next_token"))
                return
            self._advance(job, int(to_numpy(tokens["next_token"])[0]))

    def _chain_failed(self, job: Job, packet: ChainPacket) -> None:
        if packet.error_code == ChainPacket.ERROR_SESSION_LOST and not job.replayed:
            job.replayed = True
            self._replay(job, packet.error_message)
            return
        code = {ChainPacket.ERROR_BAD_INPUT: InferenceResult.ERROR_BAD_REQUEST,
                ChainPacket.ERROR_SESSION_LOST: InferenceResult.ERROR_MODULE_UNAVAILABLE}.get(
                    packet.error_code, InferenceResult.ERROR_INTERNAL)
        self._finish(job, "error", (code, packet.error_message))

    def _replay(self, job: Job, why: str) -> None:
        """Send everything the session holds and the step in flight again, on a fresh chain session."""
        session = self._sessions[job.session_id]
        if not job.in_flight:  # waited before its first step: start it the ordinary way, caches rebuilt
            session.needs_reset = True
            self._start(job)
            return
        everything = session.conversation.tokens + job.in_flight
        self._send_release(session.chain_session_id(job.session_id))  # what the old chain session left behind
        session.attempt += 1
        session.conversation.tokens = []
        self.get_logger().warning(f"request {job.request.request_id}: {why}; replaying {len(everything)} tokens")
        self._send(job, everything, position=0, reset=True)

    def _resume(self) -> None:
        """The chain is back: (re)start every request that waited for it."""
        for job in [j for j in self._jobs.values() if j.waiting_since]:
            job.waiting_since = 0.0
            self._replay(job, "the chain is back")

    def _hold(self, job: Job) -> None:
        """Keep a request in flight until the chain is connected again; _resume replays it."""
        job.sent_at, job.waiting_since = 0.0, time.monotonic()

    def on_plan(self, plan: PlacementPlan) -> None:
        """A new placement moves modules: probe the chain, and replay what was in flight once it is back."""
        with self._lock:
            key = (plan.plan_id, plan.version)
            if key == self._plan:
                return
            first, self._plan = self._plan is None, key
            if first:  # the plan in force when this gateway started: the first probe covers it
                return
            self.get_logger().info(f"placement plan {plan.plan_id[:8]} v{plan.version}: probing the chain again")
            self._chain_ready, self._probe_sent_at = False, None
            for job in self._jobs.values():
                if job.sent_at:
                    self._hold(job)

    def _advance(self, job: Job, token: int) -> None:
        session = self._sessions[job.session_id]
        session.conversation.tokens += job.in_flight
        job.in_flight = []
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        text = job.stream.push(token)
        job.step += 1
        chunk = self._result(job.request, text, token_ids=[token], chunk=self._next_chunk(job),
                             session_id=job.session_id)
        if token in self._eos:
            reason = "stop"
        elif job.stream.stopped:
            reason = "stop_string"
        elif len(job.stream.ids) >= job.request.options.max_new_tokens:
            reason = "length"
        else:
            reason = None  # the chain starts on the next token before this one's chunk goes out
            self._send(job, [token], position=len(session.conversation.tokens), reset=False)
        job.deliver(chunk)
        if reason is not None:
            self._finish(job, reason)

    def _finish(self, job: Job, reason: str, error: tuple[int, str] | None = None) -> None:
        now = time.monotonic()
        session = self._sessions[job.session_id]
        if error:
            session.needs_reset = True
            self.get_logger().error(f"request {job.request.request_id} failed: {error[1]}")
        elif job.messages:
            session.conversation.messages = [*job.messages, {"role": "assistant", "content": job.stream.text}]
        result = self._result(job.request, "" if error else job.stream.flush(), final=True, error=error,
                              chunk=self._next_chunk(job), session_id=job.session_id if session.keep else "")
        result.finish_reason = reason
        if job.first_token_at is not None:
            result.time_to_first_token_s = job.first_token_at - job.started
        result.timings = self._timings(job, now)
        job.deliver(result)
        if not error:
            self.get_logger().info(
                f"request {job.request.request_id}: {len(job.stream.ids)} tokens in {now - job.started:.2f} s "
                f"({reason}), first after {result.time_to_first_token_s:.3f} s"
            )
        del self._jobs[job.request.request_id]
        session.busy, session.last_used = False, now
        if session.pending:
            self._start(session.pending.popleft())
        elif not session.keep:
            self._release(job.session_id)

    def _release(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._send_release(session.chain_session_id(session_id))

    def _send_release(self, session_id: str) -> None:
        packet = ChainPacket(session_id=session_id, release=True)
        packet.header.stamp = self.get_clock().now().to_msg()
        self._chain_in.publish(packet)

    def check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job in [j for j in self._jobs.values() if j.sent_at and now - j.sent_at > self._step_timeout_s]:
                reason = f"step {job.step} got no answer from the chain in {self._step_timeout_s} s"
                self._chain_ready = False  # a module may be gone: probe before serving again
                if job.retries < self._max_retries:
                    job.retries += 1
                    self.get_logger().warning(f"request {job.request.request_id}: {reason}; retrying once the "
                                              f"chain is connected (retry {job.retries} of {self._max_retries})")
                    self._hold(job)
                else:
                    self._finish(job, "error", (InferenceResult.ERROR_TIMEOUT, reason))
            for job in [j for j in self._jobs.values()
                        if j.waiting_since and now - j.waiting_since > self._failover_timeout_s]:
                self._finish(job, "error", (InferenceResult.ERROR_MODULE_UNAVAILABLE,
                                            f"the chain was not connected again within {self._failover_timeout_s} s"))
            if not self._chain_ready and (self._probe_sent_at is None or now - self._probe_sent_at > PROBE_INTERVAL_S):
                self._probe_sent_at = now
                self._send_release(self._probe_prefix + uuid.uuid4().hex)
            for session_id in [sid for sid, s in self._sessions.items()
                               if not s.busy and not s.pending and now - s.last_used > self._idle_s]:
                self.get_logger().info(f"session {session_id} expired (idle)")
                self._release(session_id)

    # -- results ------------------------------------------------------------------------------------------------

    def _next_chunk(self, job: Job) -> int:
        job.chunks += 1
        return job.chunks - 1

    def _result(self, request: InferenceRequest, text: str, final: bool = False, token_ids: list[int] = (),
                error: tuple[int, str] | None = None, chunk: int = 0, session_id: str = "") -> InferenceResult:
        result = InferenceResult(request_id=request.request_id, session_id=session_id, chunk_index=chunk,
                                 token_ids=list(token_ids), text=text, final=final)
        result.header.stamp = self.get_clock().now().to_msg()
        if error:
            result.error_code, result.error_message, result.finish_reason = error[0], error[1], "error"
        return result

    def _timings(self, job: Job, now: float) -> list[StageTiming]:
        total = now - job.started
        computed = sum(job.module_seconds.values())
        timings = [StageTiming(stage=stage, host_id=host, seconds=seconds)
                   for (stage, host), seconds in job.module_seconds.items()]
        timings.append(StageTiming(stage="transfer_and_queueing", seconds=max(total - computed, 0.0)))
        timings.append(StageTiming(stage="total", seconds=total))
        return timings


def _merge(chunks: list[InferenceResult]) -> InferenceResult:
    """One final result holding every chunk's tokens and text."""
    final = chunks[-1]
    final.token_ids = [t for c in chunks for t in c.token_ids]
    final.text = "".join(c.text for c in chunks)
    final.chunk_index = 0
    return final


def main(args: list[str] | None = None) -> None:
    try:
        with rclpy.init(args=args):
            rclpy.spin(GatewayNode())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
