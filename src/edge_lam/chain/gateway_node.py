"""The inference gateway node: InferenceRequests in, prefill and token-by-token steps through the chain, streamed
InferenceResult chunks out. ``edge_lam.chain.gateway.GatewayCore`` decides everything; this node converts messages
to its events and carries out the actions it returns.

Requests come on a topic (results stream on another), through the ``generate`` service for callers that wait for
the whole answer, or as goals of the ``generate`` action, which streams each chunk as feedback, gives the whole
answer as its result and can be cancelled.

Timeouts, flow settings and bounds are live parameters (`ros2 param set` takes effect for the next request or
tick); topics and the model are read-only. How many requests run and wait against ``max_queued_requests`` is on
/diagnostics.

With ``standby`` set, the node is a standby gateway (``edge_lam.chain.standby``, doc/chain.md "Standby gateway"): it
holds every request the active gateway gets, mirrors the active one's progress topic and watches its writer's
liveliness; when that writer is lost (or none appeared within ``liveliness_lease_s`` + STARTUP_GRACE_S of its start)
it takes over, resuming what the active one left unfinished.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from edge_lam_msgs.action import Generate as GenerateAction
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult, PlacementPlan
from edge_lam_msgs.srv import Generate as GenerateService
from rclpy.action import CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.event_handler import QoSLivelinessChangedInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.task import Future

from edge_lam.chain.flow import DRAFTERS, MAX_DRAFT_TOKENS, POLICIES, FlowSettings
from edge_lam.chain.gateway import Action, GatewayCore, Timeouts
from edge_lam.chain.handover_action import HandoverActionServer
from edge_lam.chain.requests import CANCELLED, ChainStep, Log, Request, Result, ResultError, merge
from edge_lam.chain.standby import ANONYMOUS, StandbyLedger
from edge_lam.ros.bounds import Bounds
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import CONTROL, LATCHED, TENSORS, with_lease
from edge_lam.ros.trust import declare_trust
from edge_lam.wire.chain import from_output_msg, to_step_msg
from edge_lam.wire.requests import from_request_msg, from_result_msg, to_result_msg

TICK_S = 0.1  # how often the core's clock advances: probes go again after PROBE_INTERVAL_S, timeouts are checked
# A standby that has seen no live active gateway this long after its lease (from when it starts spinning) takes
# over, unless the graph shows a progress writer it has not yet heard assert its liveliness (discovery of a
# gateway's two dozen endpoints took 1.3-1.4 s here, 2 cores): it then waits up to DISCOVERY_S more. A writer
# that never becomes alive is a killed gateway's, left in the graph until its participant lease ends.
STARTUP_GRACE_S = 3.0
# A standby takes over only when the active gateway's writer is still not alive this long after its liveliness was
# lost, and still at the tick after the one that first saw it so: a participant starved of CPU for a moment misses a
# lease and is alive again at its next assertion, and two active gateways would answer every request twice. A
# standby starved itself may run its tick before its middleware threads, starved too, have delivered the assertions
# that came meanwhile: the second tick gives them a tick's time (with one tick, false takeovers on 2 loaded cores
# made two active gateways and failed a test).
CONFIRM_LOSS_S = 0.1
DISCOVERY_S = 5.0


class Reply:
    """The results of one request whose caller waits: each passed on as it comes, the whole answer once final."""

    def __init__(self, on_chunk: Callable[[Result], None] | None = None) -> None:
        self.chunks: list[Result] = []
        self.done: Future = Future()
        self.on_chunk = on_chunk

    def add(self, result: Result) -> None:
        self.chunks.append(result)
        if self.on_chunk is not None:
            self.on_chunk(result)
        if result.final:
            self.done.set_result(merge(self.chunks))


@dataclass(frozen=True)
class HeldGoal:
    """An action goal a standby holds (the active gateway runs it): adopted, with its client, at a takeover."""

    goal_id: bytes
    goal: GenerateAction.Goal


class GatewayNode(Node):
    """Serves requests for ``model`` over the chain between ``chain_input_topic`` and ``chain_output_topic``."""

    def __init__(self, node_name: str = "gateway", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        model = declare(self, "model", "smollm2-135m-instruct", "Model id or folder (tokenizer, chat template).")
        chain_in = declare(self, "chain_input_topic", "chain/input", "Topic of the chain's first module.")
        chain_out = declare(self, "chain_output_topic", "chain/output", "Topic the chain's last module publishes to.")
        requests = declare(self, "requests_topic", "requests", "InferenceRequest topic.")
        results = declare(self, "results_topic", "results", "InferenceResult topic (streamed chunks).")
        max_new = declare(self, "max_new_tokens_limit", 1024, "Largest max_new_tokens a request may ask for.",
                          on_change=lambda v: self._set("limits", max_new_tokens=v), low=1)
        max_context = declare(self, "max_context_tokens", 2048, "Largest session length (prompt and answer), tokens.")
        bounds = {
            "max_queued_requests": declare(
                self, "max_queued_requests", 32, "Requests held at once (running or waiting for their session or the "
                "chain); beyond, a request is refused at once as busy.",
                on_change=lambda v: self._set("limits", max_queued_requests=v), low=1),
            "max_prompt_chars": declare(
                self, "max_prompt_chars", 32768, "Longest prompt, characters; checked before tokenising.",
                on_change=lambda v: self._set("limits", max_prompt_chars=v), low=1),
            "max_stop_strings": declare(
                self, "max_stop_strings", 16, "Most stop strings a request may give.",
                on_change=lambda v: self._set("limits", max_stop_strings=v), low=0),
            "max_stop_chars": declare(
                self, "max_stop_chars", 256, "Longest stop string, characters.",
                on_change=lambda v: self._set("limits", max_stop_chars=v), low=1),
        }
        step_timeout_s = declare(
            self, "step_timeout_s", 60.0,
            "A step with no answer after this long is retried on the chain as it is then (or fails, after "
            "max_retries).", on_change=lambda v: self._set("timeouts", step_s=v), check=_positive)
        failover_timeout_s = declare(
            self, "failover_timeout_s", 60.0,
            "How long a request waits for a chain that lost a module to be connected again before it fails.",
            on_change=lambda v: self._set("timeouts", failover_s=v), check=_positive)
        max_retries = declare(self, "max_retries", 3, "Step timeouts a request survives by replaying.",
                              on_change=lambda v: self._set("timeouts", max_retries=v), low=0)
        plan_topic = declare(self, "plan_topic", "/edge_lam/plan",
                             "PlacementPlan topic: a new plan replays the requests in flight; empty to ignore plans.")
        idle_s = declare(self, "session_idle_timeout_s", 600.0, "Forget a kept session after this long unused.",
                         on_change=lambda v: self._set("timeouts", session_idle_s=v), check=_positive)
        exit_topic = declare(self, "exit_topic", "chain/exit", "Topic the robot's early exit answers on (shard "
                             "module exit:L); empty: no exit (device and cascade steps then go through the chain).")
        flows = FlowSettings(
            policy=declare(self, "default_policy", "chain", "Policy of requests that name none: chain, device, "
                           "cascade or speculative (doc/flow.md).",
                           on_change=lambda v: self._set("flows", policy=v),
                           check=lambda v: None if v in POLICIES else f"not one of {list(POLICIES)}"),
            cascade_threshold=declare(self, "cascade_threshold", 0.8, "cascade: the exit decides a token when its "
                                      "probability reaches this (requests may set their own).",
                                      on_change=lambda v: self._set("flows", cascade_threshold=v), low=0.0, high=1.0),
            draft_tokens=declare(self, "draft_tokens", 4, "speculative: drafts checked per pass through the chain.",
                                 on_change=lambda v: self._set("flows", draft_tokens=v), low=1,
                                 high=MAX_DRAFT_TOKENS),
            drafter=declare(self, "drafter", "ngram", "speculative: ngram (prompt lookup) or exit (the robot's "
                            "early exit).", on_change=lambda v: self._set("flows", drafter=v),
                            check=lambda v: None if v in DRAFTERS else f"not one of {list(DRAFTERS)}"),
            degrade_after_s=declare(self, "degrade_after_s", 5.0, "A step the chain leaves unanswered this long "
                                    "finishes its request on the robot's exit (flagged degraded), if it allows.",
                                    on_change=lambda v: self._set("flows", degrade_after_s=v), check=_positive),
            exit=bool(exit_topic),
        )
        self._standby = declare(self, "standby", False, "Start as a standby gateway: hold the requests the active "
                                "gateway gets and take over when its progress writer's liveliness is lost.")
        self._progress_topic = declare(self, "progress_topic", "gateway/progress", "Every chunk the active gateway "
                                       "sends (topic, service and action alike): what a standby mirrors and watches.")
        self._lease_s = declare(self, "liveliness_lease_s", 0.3, "Liveliness lease of the progress writer (active) "
                                "and reader (standby): how soon a standby hears that the active gateway is gone.",
                                check=_positive)
        self._trust = declare_trust(self, "publish plans that make the gateway replay every request in flight, and "
                                    "answer on the chain's output in its place (the caller gets forged tokens)")
        self._head_host = ""  # host of the plan's last module: with trust on, the only signer of the chain's output
        self._placement: list[tuple[str, str, str, str]] = []  # the last plan's modules, hosts and topics

        timeouts = Timeouts(step_s=step_timeout_s, max_retries=max_retries, failover_s=failover_timeout_s,
                            session_idle_s=idle_s)
        # The core is not thread-safe, and the callbacks of the reentrant group below may run beside the others
        # under a multi-threaded executor.
        self._lock = threading.Lock()
        self._core = GatewayCore.for_model(model, max_new, max_context, timeouts, flows, **bounds)
        self._bounds = Bounds(self)
        self._bounds.add("requests_running", lambda: self._load()[0], lambda: self._core.limits.max_queued_requests)
        self._bounds.add("requests_queued", lambda: self._load()[1], lambda: self._core.limits.max_queued_requests)
        self._goals: dict[bytes, tuple[str, Reply]] = {}  # goal id -> its request id and reply, while it runs
        self._chain_in = self.create_publisher(ChainPacket, chain_in, TENSORS)
        self._chain_out = self.create_subscription(ChainPacket, chain_out, self.on_chain_output, TENSORS)
        if exit_topic:
            self._exit_out = self.create_subscription(ChainPacket, exit_topic, self.on_exit_output, TENSORS)
        self._results = self.create_publisher(InferenceResult, results, CONTROL)
        self._requests = self.create_subscription(InferenceRequest, requests, self.on_request, CONTROL)
        # A group of their own for the service and the action: a call or goal waits, as a coroutine that holds no
        # executor thread, for results the chain output callback delivers, and a pending coroutine keeps its group
        # busy until it returns; in the node's default group it would block that very callback. Reentrant, so
        # several calls and goals can wait at once.
        self._waiting = ReentrantCallbackGroup()
        self._service = self.create_service(GenerateService, "generate", self.on_generate,
                                            callback_group=self._waiting)
        self._progress = None
        self._ledger: StandbyLedger | None = None  # while a standby: what it holds
        self._plan_key: tuple[str, int] | None = None  # the latest plan a standby saw, for its core at takeover
        if self._standby:
            self._ledger = StandbyLedger(max_chunks=max_new + 1)
            self._started_at: float | None = None  # the first tick: when it spins
            self._active_seen = False
            self._lost_at: float | None = None  # when the active gateway's writer lost liveliness, until confirmed
            self._loss_ticked = False  # a tick saw that loss past CONFIRM_LOSS_S: the next one takes over
            self._mirror = self.create_subscription(
                InferenceResult, self._progress_topic, self.on_progress, with_lease(CONTROL, self._lease_s),
                event_callbacks=SubscriptionEventCallbacks(liveliness=self.on_liveliness))
            # What the caller of a topic request got: the active one's last chunk may be there and not in progress.
            self._mirror_results = self.create_subscription(InferenceResult, results, self.on_progress, CONTROL)
        else:
            self._become_active()
        # Feedback is every chunk of an answer: reliable and keep-all (CONTROL), or a slow client would lose some.
        self._action = HandoverActionServer(
            self, GenerateAction, "generate", execute_callback=self.execute_goal, goal_callback=self.accept_goal,
            cancel_callback=self.cancel_goal, callback_group=self._waiting, feedback_pub_qos_profile=CONTROL,
            standby=self._standby, on_goal=self.on_standby_goal)
        self._watchdog = self.create_timer(TICK_S, self.tick)
        if plan_topic:
            self._plan_channel = self.create_subscription(PlacementPlan, plan_topic, self.on_plan, LATCHED).topic_name
        self.get_logger().info(
            ("standby for " if self._standby else "serving ")
            + f"{model} through {self._chain_in.topic_name} -> {self._chain_out.topic_name}; "
            f"requests on {self._requests.topic_name}, results on {self._results.topic_name}, "
            f"service and action {self._service.srv_name}; requests without a policy: {flows.policy}"
            + (f"; early exit on {self._exit_out.topic_name}" if exit_topic else "")
            + ("" if self._core.has_chat_template else "; no chat template: prompts go in as plain text")
        )

    # -- events in ------------------------------------------------------------------------------------------------

    def on_request(self, msg: InferenceRequest) -> None:
        request = from_request_msg(msg)
        with self._lock:
            if self._ledger is not None:
                self._hold(request)
                return
        self._run(self._core.request, _named(request))

    def on_standby_goal(self, goal_id: bytes, goal: GenerateAction.Goal) -> None:
        """A goal the active gateway got (and runs): a standby holds its request, to adopt it at a takeover."""
        with self._lock:
            if self._ledger is not None:
                self._hold(_goal_request(goal_id, goal), HeldGoal(goal_id, goal))

    def on_progress(self, msg: InferenceResult) -> None:
        """A chunk the active gateway sent: a standby forgets what it finished and answers its held calls."""
        chunk = from_result_msg(msg)
        with self._lock:
            answers = self._ledger.progress(chunk) if self._ledger is not None else []
        for waiter, answer in answers:
            if isinstance(waiter, HeldGoal):
                self._action.forget(waiter.goal_id)  # the active one answers its client's result request
            else:
                waiter.done.set_result(answer)

    def on_liveliness(self, info: QoSLivelinessChangedInfo) -> None:
        if self._ledger is None:  # active (after a takeover, its own writer is one of those counted)
            return
        if info.alive_count > 0:
            if not self._active_seen:
                self.get_logger().info(f"standby: the active gateway is alive on {self._mirror.topic_name}")
            elif self._lost_at is not None:
                self.get_logger().warning("standby: the active gateway's progress writer is alive again (it missed its "
                                          f"{self._lease_s} s lease, starved of CPU?): not taking over")
            self._active_seen, self._lost_at, self._loss_ticked = True, None, False
        elif self._active_seen and self._lost_at is None:
            self._lost_at = time.monotonic()  # the next tick past CONFIRM_LOSS_S takes over

    def on_chain_output(self, packet: ChainPacket) -> None:
        if self._ledger is not None:  # a standby: the active gateway's steps
            return
        # A token is streamed only from the host the plan in force puts the head on (any fleet key before a plan).
        if not self._trust.accept(packet, self._chain_out.topic_name, identity=self._head_host or None):
            return
        self._run(self._core.chain_output, from_output_msg(packet, self._core.vocab_size))

    def on_exit_output(self, packet: ChainPacket) -> None:
        if self._ledger is not None:
            return
        if not self._trust.accept(packet, self._exit_out.topic_name):
            return
        self._run(self._core.exit_output, from_output_msg(packet, self._core.vocab_size))

    def on_plan(self, plan: PlacementPlan) -> None:
        if not self._trust.accept(plan, self._plan_channel, max_age=False):
            return
        self._head_host = plan.modules[-1].host_id if plan.modules else ""
        with self._lock:
            self._core.expected_token_s = plan.expected_latency_s  # what a request's decode is checked against
        placement = [(m.module_id, m.host_id, m.input_topic, m.output_topic) for m in plan.modules]
        if placement == self._placement:
            return  # the same modules in the same places (new standby copies, say): nothing in flight moved
        self._placement = placement
        with self._lock:
            self._plan_key = (plan.plan_id, plan.version)
            if self._ledger is not None:  # a standby sends no probe: its core gets the plan at takeover
                return
        self._run(self._core.plan, self._plan_key)

    def tick(self) -> None:
        if self._ledger is None:
            self._run(self._core.tick)
            return
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        if self._lost_at is not None and now - self._lost_at >= CONFIRM_LOSS_S:
            if not self._loss_ticked:  # an assertion that came meanwhile has until the next tick
                self._loss_ticked = True
                return
            self._take_over(f"the active gateway's progress writer lost its liveliness ({self._lease_s} s lease) and "
                            f"stayed lost for {now - self._lost_at:.2f} s")
            return
        waited, grace = now - self._started_at, self._lease_s + STARTUP_GRACE_S
        if self._active_seen or waited <= grace:
            return
        if self._mirror.get_publisher_count() == 0 or waited > grace + DISCOVERY_S:
            self._take_over(f"no live active gateway on {self._mirror.topic_name} {waited:.1f} s after the start")

    async def on_generate(self, call: GenerateService.Request,
                          response: GenerateService.Response) -> GenerateService.Response:
        request, reply = from_request_msg(call.request), Reply()
        with self._lock:
            held = self._ledger is not None
            if held:
                self._hold(request, reply)
        if held:  # a standby: the active gateway's answer (mirrored), or this one's after a takeover
            response.result = self._result_msg(await reply.done)
            return response
        response.result = self._result_msg(await self._answer(_named(request), reply))
        return response

    def accept_goal(self, goal: GenerateAction.Goal) -> GoalResponse:
        """Accept every goal: a bad request is answered with an error result, as on the topic and the service."""
        return GoalResponse.ACCEPT

    def cancel_goal(self, goal: ServerGoalHandle) -> CancelResponse:
        """Stop a generation at once: its result says cancelled, and the chain drops its session's caches."""
        running = self._goals.get(bytes(goal.goal_id.uuid))
        if running is None or running[1].done.done():  # not started yet, or its answer is complete
            return CancelResponse.REJECT
        self._run(self._core.cancel, running[0])
        return CancelResponse.ACCEPT

    async def execute_goal(self, goal: ServerGoalHandle) -> GenerateAction.Result:
        """Generate the goal's answer: every chunk as feedback, the whole answer as the result."""
        request = _goal_request(bytes(goal.goal_id.uuid), goal.request)
        reply = Reply(self._feedback(goal))
        return await self._goal_result(goal, request.request_id, reply, self._answer(request, reply))

    async def _goal_result(self, goal: ServerGoalHandle, request_id: str, reply: Reply,
                           answer: Awaitable[Result]) -> GenerateAction.Result:
        """The goal's end: its state from its whole answer (cancelled, aborted on an error, or succeeded)."""
        key = bytes(goal.goal_id.uuid)
        self._goals[key] = (request_id, reply)  # cancel_goal finds the request by the goal
        try:
            result = await answer
        finally:
            del self._goals[key]
        if result.finish_reason == CANCELLED and goal.is_cancel_requested:
            goal.canceled()
        elif result.error_code:
            goal.abort()
        else:
            goal.succeed()
        return GenerateAction.Result(result=self._result_msg(result))

    async def _answer(self, request: Request, reply: Reply) -> Result:
        """Submit a request and wait for its whole answer (the core's watchdog guarantees a final chunk)."""
        try:
            self._run(self._core.request, request, reply_to=reply.add)
            return await reply.done
        except Exception as err:  # an exception in a coroutine would be swallowed and leave the caller hanging
            self.get_logger().error(f"request {request.request_id}: {type(err).__name__}: {err}")
            return Result(request.request_id, final=True, finish_reason="error", error_code=ResultError.INTERNAL,
                          error_message=f"{type(err).__name__}: {err}")

    # -- standby --------------------------------------------------------------------------------------------------

    def _hold(self, request: Request, reply: Reply | HeldGoal | None = None) -> None:
        """A standby holds a request (called with the lock held). A call is answered at once when the active gateway
        already finished it, or as busy when the standby holds its max_queued_requests."""
        limit = self._core.limits.max_queued_requests
        if len(self._ledger) >= limit:
            self.get_logger().warning(f"standby: request '{request.request_id}' not held: {limit} held "
                                      "(max_queued_requests)")
            if isinstance(reply, Reply):  # a held goal's busy answer is the active gateway's to give
                reply.done.set_result(Result(request.request_id, final=True, finish_reason="error",
                                             error_code=ResultError.BUSY,
                                             error_message=f"busy: the standby gateway holds {limit} requests"))
            return
        answered = self._ledger.hold(request, reply)
        if answered is not None and isinstance(reply, Reply):
            reply.done.set_result(answered)
        elif answered is not None:  # a goal the active gateway already answered
            self._action.forget(reply.goal_id)

    def _take_over(self, why: str) -> None:
        """Become the active gateway: publish progress, serve the action, and resume every request held."""
        with self._lock:
            if self._ledger is None:
                return
            held, self._ledger = self._ledger.take_over(), None
            self.destroy_subscription(self._mirror_results)  # from now on, its own results
            plan_key = self._plan_key
        self.get_logger().warning(f"taking over as the active gateway: {why}; resuming {len(held)} requests")
        self._become_active()
        if plan_key is not None:
            self._run(self._core.plan, plan_key)  # the first plan it sees: no probe of its own
        self._run(self._core.take_over)
        for each in held:
            reply = each.waiter
            if isinstance(reply, HeldGoal):
                reply = self._adopt(reply, each.chunks)
            elif reply is not None:
                for chunk in each.chunks:  # a call's whole answer includes what the active one streamed
                    reply.add(chunk)
            self._run(self._core.resume, _named(each.request), each.streamed, len(each.chunks),
                      reply_to=reply.add if reply is not None else None)
        unknown = self._action.activate()
        if unknown:
            self.get_logger().warning(f"{unknown} result requests for goals the standby never held answered "
                                      "STATUS_UNKNOWN (their goals came before it started, or beyond its bound)")

    def _become_active(self) -> None:
        self._progress = self.create_publisher(InferenceResult, self._progress_topic,
                                               with_lease(CONTROL, self._lease_s))

    def _adopt(self, goal: HeldGoal, chunks: list[Result]) -> Reply:
        """Take over a goal the active gateway was running: its client gets the rest as feedback and the whole
        answer (with what the active one streamed) as its result."""
        reply = Reply()
        for chunk in chunks:  # its client has these as feedback already
            reply.add(chunk)
        request_id = _goal_request(goal.goal_id, goal.goal).request_id

        async def finish(handle: ServerGoalHandle) -> GenerateAction.Result:
            return await self._goal_result(handle, request_id, reply, reply.done)

        reply.on_chunk = self._feedback(self._action.adopt(goal.goal_id, goal.goal, finish))
        return reply

    def _feedback(self, goal: ServerGoalHandle) -> Callable[[Result], None]:
        return lambda chunk: goal.publish_feedback(GenerateAction.Feedback(chunk=self._result_msg(chunk)))

    # -- actions out ----------------------------------------------------------------------------------------------

    def _set(self, settings: str, **change) -> None:
        """A live parameter: the core's ``settings`` (limits, timeouts or flows) with ``change``, from now on."""
        with self._lock:
            setattr(self._core, settings, replace(getattr(self._core, settings), **change))

    def _load(self) -> tuple[int, int]:
        """Requests running and queued; a standby's held requests count as queued (max_queued_requests bounds them)."""
        with self._lock:
            running, queued = self._core.load()
            return running, queued + (len(self._ledger) if self._ledger is not None else 0)

    def _run(self, event: Callable[..., list[Action]], *args, **kwargs) -> None:
        """Hand the core an event with the time, and carry out the actions it returns, in order. An exception in the
        core is logged, and a request it was handling gets an internal error: the node and the requests it holds
        live on."""
        with self._lock:
            try:
                actions = event(*args, time.monotonic(), **kwargs)
            except Exception as err:
                self.get_logger().error(f"{event.__name__}: {type(err).__name__}: {err}")
                if event in (self._core.request, self._core.resume):
                    request = args[0]
                    actions = [Result(request.request_id, final=True, finish_reason="error",
                                      error_code=ResultError.INTERNAL, error_message=f"{type(err).__name__}: {err}",
                                      reply_to=kwargs.get("reply_to"))]
                else:
                    return
            for action in actions:
                if isinstance(action, ChainStep):
                    self._chain_in.publish(self._trust.sign(to_step_msg(action, self.get_clock().now().to_msg())))
                elif isinstance(action, Result):
                    (action.reply_to or self._publish_result)(action)
                    # After the caller's copy: a standby that resumes from here never skips a chunk. It reads the
                    # results topic too, so a topic request's chunk comes twice only when it was on its way at the
                    # kill; an action goal's feedback chunk also when killed between the two sends.
                    self._progress.publish(self._result_msg(action))
                elif isinstance(action, Log):
                    self._log(action)

    def _log(self, line: Log) -> None:
        # One call per level: rclpy's logger refuses a call site whose severity changes between calls.
        if line.level == "error":
            self.get_logger().error(line.text)
        elif line.level == "warning":
            self.get_logger().warning(line.text)
        else:
            self.get_logger().info(line.text)

    def _publish_result(self, result: Result) -> None:
        self._results.publish(self._result_msg(result))

    def _result_msg(self, result: Result) -> InferenceResult:
        return to_result_msg(result, self.get_clock().now().to_msg())


def _goal_request(goal_id: bytes, goal: GenerateAction.Goal) -> Request:
    """A goal's request, named after the goal when it came without an id: the name the active gateway and a standby
    both give it (cancel_goal, and a standby's ledger, find the request by it)."""
    request = from_request_msg(goal.request)
    return request if request.request_id else replace(request, request_id=f"goal-{goal_id.hex()}")


def _named(request: Request) -> Request:
    """The request with an id: an active gateway names one that came without (ANONYMOUS, so a standby can tell its
    answers from those of requests it could match)."""
    return request if request.request_id else replace(request, request_id=ANONYMOUS + uuid.uuid4().hex)


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def main(args: list[str] | None = None) -> None:
    spin_node(GatewayNode, args)
