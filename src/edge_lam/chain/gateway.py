"""The gateway's logic: sessions, jobs, step scheduling, replay, probes and failover, with no ROS.

Events go in (a request, a packet from the chain's last module, a new placement plan, a cancel, the time) and every
call returns the actions they cause, in order: chain steps to send, results to deliver and log lines. Every call takes
``now`` (monotonic seconds): there is no clock in here, so tests drive it on a fake one.

Each request gets exactly one final result: the answer, or an error with its reason. A session whose caches a shard
lost is replayed once from its tokens; a session after any other failure is replayed on its next request.

The gateway serves only once a probe (a release of a throwaway chain session, which every module passes on) has
come back through the whole chain: a packet sent before every hop's writer has matched its reader would be lost.

Failover: when a step gets no answer in ``step_s`` (a module's host died) or a new placement plan arrives, the core
probes the chain again and, once a probe comes back, replays each request in flight from its tokens on a fresh chain
session (``<session>~N``; late packets of the old one are recognised and dropped), up to ``max_retries`` timeouts per
request. Requests that arrive meanwhile wait for the chain; any that waits longer than ``failover_s`` gets an error.

A standby gateway that takes over (``take_over``) resumes each request the dead one left unfinished (``resume``):
the prompt and the tokens its caller already has go through the chain as one prefill, and only what follows is
streamed, chunk indices going on from the caller's.

A cancelled request ends at once with finish reason ``cancelled`` and the tokens it had; its chain session is
released, so the shards drop its caches, and packets still on their way for it are dropped.

A request answered through the chain (policy ``chain``) whose decode took more than 25% longer or shorter per token
than the plan in force expected (``expected_token_s``, set from each plan) is logged as a warning with both figures,
at most once a minute (``latency_drift``).

The gateway holds at most ``Limits.max_queued_requests`` requests (running or waiting): beyond that a request is
refused at once as busy, so a burst gets a clear answer instead of waiting behind a backlog until its steps time out.
``limits``, ``timeouts`` and ``flows`` may be replaced between events (live parameters): requests already accepted
keep the policy settings they started with.

Each request follows a policy (``edge_lam.chain.flow``): its steps go through the chain, stop at the robot's early
exit, or both (cascade), or carry drafts for the head to verify (speculative); every token's result says where it was
decided. Every data step truncates the caches to its position, so drafts a verification rejected (or a cascade's
positions the gateway no longer needs) never linger.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from transformers import AutoConfig, GenerationConfig

from edge_lam.chain import flow
from edge_lam.chain.drafting import AnswerHistory, prompt_lookup
from edge_lam.chain.flow import Flow, FlowSettings
from edge_lam.chain.generation import Conversation, Limits, TextStream, check_request, prompt_ids
from edge_lam.chain.latency_drift import DriftWatch, decode_s_per_token
from edge_lam.chain.requests import (
    CANCELLED,
    ChainError,
    ChainOutput,
    ChainStep,
    Log,
    Request,
    Result,
    ResultError,
    Route,
    Source,
)
from edge_lam.descriptors import Stage
from edge_lam.model.loading import load_tokenizer, model_path

__all__ = ["PROBE_INTERVAL_S", "Action", "GatewayCore", "Timeouts"]

Action = ChainStep | Result | Log
DEFAULT_FLOWS = FlowSettings()
# How often to send a probe through the chain while it is not known to be connected: a probe that a module not yet
# switched to the new plan dropped is sent again soon, since every request in flight waits for one to come back.
PROBE_INTERVAL_S = 0.25
# How often to probe for the robot's early exit while none has answered: rarer, since a chain may have none (its
# probes then go through the whole chain and back, ignored).
EXIT_PROBE_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Timeouts:
    """How long the gateway waits for the chain, and how many step timeouts a request survives by replaying."""

    step_s: float = 60.0  # a step with no answer after this long: probe the chain, then replay (or fail)
    max_retries: int = 3  # step timeouts a request survives by replaying
    failover_s: float = 60.0  # how long a request waits for the chain to be connected again
    session_idle_s: float = 600.0  # forget a kept session after this long unused


@dataclass
class SessionState:
    conversation: Conversation = field(default_factory=Conversation)
    keep: bool = False
    busy: bool = False
    needs_reset: bool = False
    attempt: int = 0  # chain sessions used so far; the chain knows this session as chain_session_id()
    last_used: float = 0.0
    pending: deque[Job] = field(default_factory=deque)
    behind: bool = False  # steps stopped at the exit: the modules after it lack positions the session holds
    adapter: str = ""  # the LoRA adapter its caches were computed with

    def chain_session_id(self, session_id: str) -> str:
        return session_id if self.attempt == 0 else f"{session_id}~{self.attempt}"


@dataclass(eq=False)  # a job is itself, whatever its fields say
class Job:
    request: Request
    session_id: str
    stream: TextStream
    started: float
    reply_to: object = None
    messages: list[dict[str, str]] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)  # ids sent in the current step, not yet in the caches
    step: int = 0  # tokens generated so far: the request step of the next token
    sent_step: int = 0  # the step number of the packet in flight (a draft's is the step of the token it drafts)
    chunks: int = 0
    sent_at: float | None = None  # when the step in flight was sent; None when none is
    first_token_at: float | None = None
    replayed: bool = False
    retries: int = 0  # step timeouts survived by replaying
    waiting_since: float | None = None  # waiting for the chain to be connected again before (re)sending
    module_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    flow: Flow | None = None
    route: Route = Route.CHAIN  # of the step in flight
    drafts: list[int] = field(default_factory=list)  # the step in flight's drafts (verify), or those drafted so far
    drafting: bool = False  # the step in flight asks the exit for a draft
    decided_early: dict[int, int] = field(default_factory=dict)  # cascade steps the exit decided -> its token
    sources: list[Source] = field(default_factory=list)
    degraded: bool = False
    drafted: int = 0
    accepted: int = 0
    verify_passes: int = 0


class GatewayCore:
    """Serves requests for ``model_id`` over a chain: one call per event, the actions it causes returned."""

    def __init__(self, tokenizer, model_id: str, limits: Limits, eos: Iterable[int],
                 timeouts: Timeouts = Timeouts(), flows: FlowSettings = DEFAULT_FLOWS) -> None:
        self._tokenizer = tokenizer
        self._model_id = model_id
        self.limits = limits
        self._eos = frozenset(eos)
        self.timeouts = timeouts
        self.flows = flows
        self._exit_ready = False  # the robot's exit answered a probe (and no exit step has timed out since)
        self._exit_probe_sent_at: float | None = None
        self._answers = AnswerHistory()  # where prompt lookup finds drafts the session does not hold
        self._jobs: dict[str, Job] = {}
        self._sessions: dict[str, SessionState] = {}
        self._chain_ready = False
        self._ever_ready = False
        self._plan: tuple[str, int] | None = None
        self._probe_prefix = f"probe-{uuid.uuid4().hex[:8]}-"  # chain session ids of this gateway's probes
        self._probe_sent_at: float | None = None
        self._out: list[Action] = []
        self.expected_token_s = 0.0  # the plan in force's expected per-token latency; 0: none known
        self._drift = DriftWatch()

    @classmethod
    def for_model(cls, model: str, max_new_tokens: int, max_context_tokens: int,
                  timeouts: Timeouts = Timeouts(), flows: FlowSettings = DEFAULT_FLOWS, **bounds: int) -> GatewayCore:
        """A core for a model id or folder: its tokenizer, vocabulary, context length and end-of-sequence tokens;
        ``bounds`` are the other fields of :class:`Limits`."""
        path = model_path(model)
        config = AutoConfig.from_pretrained(path).get_text_config(decoder=True)
        tokenizer = load_tokenizer(model)
        eos = GenerationConfig.from_pretrained(path).eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        limits = Limits(config.vocab_size, max_new_tokens, min(max_context_tokens, config.max_position_embeddings),
                        **bounds)
        return cls(tokenizer, model, limits, eos_ids, timeouts, flows)

    @property
    def vocab_size(self) -> int:
        return self.limits.vocab_size

    @property
    def has_chat_template(self) -> bool:
        """Without one (a base model), prompts go in as plain text."""
        return self._tokenizer.chat_template is not None

    def load(self) -> tuple[int, int]:
        """Requests held: (running, with a step in flight; queued, waiting for their session or the chain)."""
        running = sum(job.sent_at is not None for job in self._jobs.values())
        return running, len(self._jobs) - running

    # -- events ---------------------------------------------------------------------------------------------------

    def request(self, request: Request, now: float, reply_to: object = None) -> list[Action]:
        """Accept a request: answer at once if it is bad, else start it or queue it behind its session's.

        Every result of the request carries ``reply_to``.
        """
        return self.resume(request, (), 0, now, reply_to)

    def resume(self, request: Request, streamed: Sequence[int], chunks: int, now: float,
               reply_to: object = None) -> list[Action]:
        """Take over a request another gateway was answering when it died: its caller already has the ``streamed``
        tokens, in ``chunks`` chunks. The prompt and those tokens go through the chain as one prefill and only what
        follows is streamed, chunk indices going on from ``chunks``: the caller sees no token twice, none missing,
        and one final. (A request is the case with nothing streamed.)"""
        if not request.request_id:
            request = replace(request, request_id=uuid.uuid4().hex)
        error = self._refuse(request)
        if error:
            self._log("warning", f"request {request.request_id} refused: {error[1]}")
            self._out.append(Result(request.request_id, chunks, final=True, finish_reason="error",
                                    error_code=error[0], error_message=error[1], reply_to=reply_to))
            return self._take()
        session_id = request.session_id or uuid.uuid4().hex
        session = self._sessions.setdefault(session_id, SessionState(last_used=now))
        session.keep = request.keep_session
        job = Job(request, session_id, TextStream(self._tokenizer, list(request.options.stop)), now, reply_to,
                  flow=Flow.of(request.options, self.flows))
        self._jobs[request.request_id] = job
        for token in streamed:  # the text stream then holds back exactly what the other gateway held back
            job.stream.push(token)
        job.step, job.chunks = len(streamed), chunks
        if streamed:
            job.first_token_at = now
            self._log("info", f"request {request.request_id}: resuming after {len(streamed)} tokens in {chunks} "
                      "chunks")
        if session.busy:
            session.pending.append(job)
        elif streamed and (reason := self._finish_reason(job, streamed[-1])) is not None:
            session.busy = True  # it ended with its last token; only the final chunk was missing
            self._finish(job, now, reason)
        else:
            self._start(job, now)
        return self._take()

    def take_over(self, now: float) -> list[Action]:
        """A standby gateway becomes the active one: the chain served the one it replaces, so requests wait for a
        probe to come back (up to ``failover_s``) instead of being refused; the probe goes at once."""
        self._ever_ready = True
        if not self._chain_ready:
            self._probe(now)
        return self._take()

    def chain_output(self, output: ChainOutput, now: float) -> list[Action]:
        """A packet from the chain's last module: a returning probe, the next token of a step (after a verification:
        the drafts kept and the next token), or an error. A malformed packet is dropped: whoever sent it, the step
        it claims to answer waits for a proper answer (or its timeout)."""
        if self._malformed("chain output", output):
            return self._take()
        if output.release:
            if output.session_id.startswith(self._probe_prefix) and not self._chain_ready:
                self._chain_ready = self._ever_ready = True
                self._log("info", "the chain is connected end to end: serving")
                self._resume(now)
            return self._take()
        job = self._awaiting(output)
        if job is not None and output.step in job.decided_early:  # the whole model's word on an exit's token
            job.decided_early.pop(output.step)
            return self._take()
        if job is None or job.drafting or output.step != job.sent_step:
            self._not_awaited("chain output", output)
            return self._take()
        self._answered(job, output, now)
        return self._take()

    def exit_output(self, output: ChainOutput, now: float) -> list[Action]:
        """A packet from the robot's early exit: a returning exit probe, or the exit's token for a step that asked."""
        if self._malformed("exit output", output):
            return self._take()
        if output.release:
            if output.session_id.startswith(self._probe_prefix) and not self._exit_ready:
                self._exit_ready = True
                self._log("info", "the robot's early exit answers: it can serve device, cascade and degraded steps")
            return self._take()
        job = self._awaiting(output)
        if job is not None and job.route == Route.CHAIN_AND_EXIT and output.step < job.sent_step:
            return self._take()  # the chain answered this cascade step first
        if job is None or job.route == Route.CHAIN or output.step != job.sent_step:
            self._not_awaited("exit output", output)
            return self._take()
        if job.route == Route.CHAIN_AND_EXIT and not output.error_code:
            if not output.tokens or output.confidence < job.flow.cascade_threshold:
                return self._take()  # not confident: the chain decides this step
            job.decided_early[job.step] = output.tokens[0]
        self._answered(job, output, now, exit_answer=True)
        return self._take()
    def plan(self, key: tuple[str, int], now: float) -> list[Action]:
        """A placement plan (plan_id, version): a new one moves modules, so probe the chain and hold what is in
        flight until a probe is back, then replay it."""
        if key == self._plan:
            return []
        first, self._plan = self._plan is None, key
        if first:  # the plan in force when this gateway started: the first probe covers it
            return []
        self._log("info", f"placement plan {key[0][:8]} v{key[1]}: probing the chain again")
        self._chain_ready = False
        for job in self._jobs.values():
            if job.sent_at is not None:
                self._hold(job, now)
        self._probe(now)  # at once: the requests held wait for it, not for the next tick
        return self._take()

    def cancel(self, request_id: str, now: float) -> list[Action]:
        """End a request at once with what it has so far; nothing when it is not being answered."""
        job = self._jobs.get(request_id)
        if job is None:
            return []
        session = self._sessions[job.session_id]
        if job in session.pending:  # queued behind its session's request: nothing of it reached the chain
            session.pending.remove(job)
            del self._jobs[request_id]
            self._out.append(self._final(job, now, CANCELLED, None, session))
        else:
            self._finish(job, now, CANCELLED)
        self._log("info", f"request {request_id} cancelled after {len(job.stream.ids)} tokens")
        return self._take()

    def tick(self, now: float) -> list[Action]:
        """Time passed: time out steps, fail requests that waited too long, probe, and expire idle sessions."""
        timeouts = self.timeouts
        if self._exit_ready:
            self._degrade_stalled(now)
        for job in [j for j in self._jobs.values() if j.sent_at is not None and now - j.sent_at > timeouts.step_s]:
            reason = f"step {job.step} got no answer from the chain in {timeouts.step_s} s"
            self._chain_ready = False  # a module may be gone: probe before serving again
            if job.route == Route.EXIT:
                self._exit_ready = False
            if job.retries < timeouts.max_retries:
                job.retries += 1
                self._log("warning", f"request {job.request.request_id}: {reason}; retrying once the chain is "
                          f"connected (retry {job.retries} of {timeouts.max_retries})")
                self._hold(job, now)
            else:
                self._finish(job, now, "error", (ResultError.TIMEOUT, reason))
        for job in [j for j in self._jobs.values()
                    if j.waiting_since is not None and now - j.waiting_since > timeouts.failover_s]:
            self._finish(job, now, "error", (ResultError.MODULE_UNAVAILABLE,
                                             f"the chain was not connected again within {timeouts.failover_s} s"))
        if not self._chain_ready and (self._probe_sent_at is None or now - self._probe_sent_at > PROBE_INTERVAL_S):
            self._probe(now)
        if self.flows.exit and not self._exit_ready and (
                self._exit_probe_sent_at is None or now - self._exit_probe_sent_at > EXIT_PROBE_INTERVAL_S):
            self._exit_probe_sent_at = now
            self._out.append(ChainStep(self._probe_prefix + uuid.uuid4().hex, release=True, route=Route.EXIT))
        for session_id in [sid for sid, s in self._sessions.items()
                           if not s.busy and not s.pending and now - s.last_used > timeouts.session_idle_s]:
            self._log("info", f"session {session_id} expired (idle)")
            self._release(session_id)
        return self._take()

    # -- serving --------------------------------------------------------------------------------------------------

    def _refuse(self, request: Request) -> tuple[ResultError, str] | None:
        options = request.options
        reason = check_request(request.prompt, request.input_token_ids, options, self.limits) \
            or flow.check(options.policy, options.drafter, options.cascade_threshold, options.draft_tokens)
        if reason:
            return ResultError.BAD_REQUEST, reason
        if request.model_id and request.model_id != self._model_id:
            return ResultError.BAD_REQUEST, f"this gateway serves '{self._model_id}', not '{request.model_id}'"
        if request.request_id in self._jobs:
            return ResultError.BAD_REQUEST, f"request_id '{request.request_id}' is already being answered"
        if request.session_id and request.session_id not in self._sessions:
            return ResultError.UNKNOWN_SESSION, f"no session '{request.session_id}' (never made, or expired)"
        if not self._chain_ready and not self._ever_ready and not (self._exit_ready and options.allow_degraded):
            return ResultError.MODULE_UNAVAILABLE, "the chain is not connected end to end (yet)"
        if len(self._jobs) >= self.limits.max_queued_requests:
            return ResultError.BUSY, (f"busy: the gateway holds {len(self._jobs)} requests, its max_queued_requests; "
                                      "try again later")
        return None

    def _start(self, job: Job, now: float) -> None:
        session = self._sessions[job.session_id]
        session.busy = True
        if not self._chain_ready and self._exit_ready and job.flow.allow_degraded and job.flow.policy != "device":
            job.flow, job.degraded = replace(job.flow, policy="device"), True
            self._log("warning", f"request {job.request.request_id}: the chain is not connected: the robot's exit "
                      "answers it (degraded)")
        if not self._chain_ready and not (job.flow.policy == "device" and self._exit_ready):
            job.waiting_since = now  # failing over: start once the chain is back
            return
        request, conversation = job.request, session.conversation
        ids, job.messages = prompt_ids(self._tokenizer, conversation, request.prompt, list(request.input_token_ids),
                                       request.options.apply_chat_template)
        if len(ids) + request.options.max_new_tokens > self.limits.max_context_tokens:
            self._finish(job, now, "error", (ResultError.BAD_REQUEST,
                                             f"{len(ids)} prompt tokens and {request.options.max_new_tokens} new "
                                             f"ones exceed the context of {self.limits.max_context_tokens}"))
            return
        ids += job.stream.ids  # a resumed request: what another gateway streamed goes in with the prompt
        held = conversation.tokens
        # Replay from the start when the caches may be stale or were computed with another adapter, when the new
        # tokens do not extend what they hold, or when there is nothing new to feed (the last token's logits are not
        # kept).
        route = self._route(job)
        if session.needs_reset or ids[:len(held)] != held or len(ids) == len(held) \
                or session.adapter != request.options.adapter:
            conversation.tokens = []
            self._send(job, now, ids, position=0, reset=True, route=route)
        else:
            self._send(job, now, ids[len(held):], position=len(held), route=route)
        session.needs_reset, session.adapter = False, request.options.adapter

    @staticmethod
    def _route(job: Job) -> Route:
        return {"device": Route.EXIT, "cascade": Route.CHAIN_AND_EXIT}.get(job.flow.policy, Route.CHAIN)

    def _send(self, job: Job, now: float, ids: list[int], position: int, reset: bool = False,
              route: Route = Route.CHAIN, drafts: list[int] | None = None, drafting: bool = False) -> None:
        """Send a step: ``ids`` at ``position`` (``drafts`` the last of them, to verify), or with ``drafting`` a
        token for the exit to draft the next one from (``in_flight`` keeps the round's first token meanwhile)."""
        session = self._sessions[job.session_id]
        if not drafting:
            job.in_flight, job.drafts = list(ids), list(drafts or [])
        job.drafting, job.route = drafting, route
        job.sent_step = job.step + (len(job.drafts) if drafting else 0)
        session.behind |= route == Route.EXIT
        options = replace(job.request.options, do_sample=False) if drafting else job.request.options
        self._out.append(ChainStep(session.chain_session_id(job.session_id), job.request.request_id, job.sent_step,
                                   position, reset, input_ids=tuple(ids), options=options, truncate=not reset,
                                   verify=bool(job.drafts) and not drafting, draft_ids=tuple(drafts or ()),
                                   route=route))
        job.sent_at = now

    def _answered(self, job: Job, output: ChainOutput, now: float, exit_answer: bool = False) -> None:
        """The step in flight got its answer: the exit's or the head's token, the drafts the head kept, or an error."""
        if output.error_code:
            self._chain_failed(job, output, now)
            return
        for timing in output.timings:
            job.module_seconds[(timing.stage, timing.host_id)] += timing.seconds
        tokens = list(output.tokens)
        if job.drafting:
            self._drafted(job, tokens[0], output.confidence, now)
            return
        kept = len(tokens) - 1
        if kept > len(job.drafts) or tokens[:kept] != job.drafts[:kept]:
            self._finish(job, now, "error", (ResultError.INTERNAL, f"the chain answered {tokens} to drafts "
                                             f"{job.drafts}: not the drafts it kept and one token"))
            return
        if job.drafts:
            drafter = Source.DRAFT_EXIT if job.flow.drafter == "exit" else Source.DRAFT_NGRAM
            sources = [drafter] * kept + [Source.CHAIN]
            job.drafted, job.verify_passes = job.drafted + len(job.drafts), job.verify_passes + 1
        else:
            sources = [Source.EXIT if exit_answer else Source.CHAIN]
            job.verify_passes += job.flow.policy == "speculative"
        self._advance(job, tokens, sources, len(job.in_flight) - len(job.drafts) + kept, now)

    def _advance(self, job: Job, tokens: list[int], sources: list[Source], cached: int, now: float) -> None:
        """Take the step's tokens (``cached``: how many of the step's inputs the caches now hold for good) and send
        the next step, unless one of them ends the request."""
        session = self._sessions[job.session_id]
        session.conversation.tokens += job.in_flight[:cached]
        job.in_flight, job.drafts = [], []
        if job.first_token_at is None:
            job.first_token_at = now
        taken, text, reason = 0, "", None
        for token in tokens:
            text += job.stream.push(token)
            taken += 1
            job.step += 1
            reason = self._finish_reason(job, token)
            if reason is not None:
                break
        job.sources += sources[:taken]
        job.accepted += sum(s in (Source.DRAFT_NGRAM, Source.DRAFT_EXIT) for s in sources[:taken])
        chunk = Result(job.request.request_id, self._next_chunk(job), tuple(tokens[:taken]), tuple(sources[:taken]),
                       text, session_id=job.session_id, reply_to=job.reply_to)
        if reason is None:  # the chain starts on the next token before this one's chunk goes out
            self._next_step(job, tokens[taken - 1], now)
        self._out.append(chunk)
        if reason is not None:
            self._finish(job, now, reason)

    def _finish_reason(self, job: Job, token: int) -> str | None:
        if token in self._eos:
            return "stop"
        if job.stream.stopped:
            return "stop_string"
        if len(job.stream.ids) >= job.request.options.max_new_tokens:
            return "length"
        return None

    def _next_step(self, job: Job, token: int, now: float) -> None:
        """The step after ``token``: as the policy says, with drafts for speculative decoding."""
        position = len(self._sessions[job.session_id].conversation.tokens)
        if job.flow.policy != "speculative":
            self._send(job, now, [token], position, route=self._route(job))
            return
        budget = min(job.flow.draft_tokens, job.request.options.max_new_tokens - len(job.stream.ids) - 1)
        if job.flow.drafter == "exit" and self._exit_ready and budget > 0:  # a round of drafts from the exit
            job.in_flight, job.drafts = [token], []
            self._send(job, now, [token], position, route=Route.EXIT, drafting=True)
            return
        context = [*self._sessions[job.session_id].conversation.tokens, token]
        drafts = prompt_lookup(context, budget, history=self._answers.tokens) if budget > 0 else []
        self._send(job, now, [token, *drafts], position, drafts=drafts)

    def _drafted(self, job: Job, draft: int, confidence: float, now: float) -> None:
        """The exit drafted a token: ask for the next, or have the chain verify the round. A draft the exit is not
        sure of (below the cascade threshold) ends the round unsent: it would most likely be rejected."""
        sure = confidence >= job.flow.cascade_threshold
        if sure:
            job.drafts.append(draft)
        budget = min(job.flow.draft_tokens, job.request.options.max_new_tokens - len(job.stream.ids) - 1)
        position = len(self._sessions[job.session_id].conversation.tokens)
        if sure and len(job.drafts) < budget and draft not in self._eos:
            self._send(job, now, [draft], position + len(job.drafts), route=Route.EXIT, drafting=True)
        else:
            self._send(job, now, [*job.in_flight, *job.drafts], position, drafts=list(job.drafts))

    def _finish(self, job: Job, now: float, reason: str, error: tuple[ResultError, str] | None = None) -> None:
        session = self._sessions[job.session_id]
        if error or reason == CANCELLED or session.behind:  # the caches may hold more, or less, than it says
            session.needs_reset, session.behind = True, False
        if error:
            self._log("error", f"request {job.request.request_id} failed: {error[1]}")
        elif reason != CANCELLED and job.messages:
            session.conversation.messages = [*job.messages, {"role": "assistant", "content": job.stream.text}]
        if not error and reason != CANCELLED and not job.degraded:
            self._answers.add(job.stream.ids)
        result = self._final(job, now, reason, error, session)
        self._out.append(result)
        if not error and reason != CANCELLED:
            self._log("info", f"request {job.request.request_id}: {len(job.stream.ids)} tokens in "
                      f"{now - job.started:.2f} s ({reason}), first after {result.time_to_first_token_s:.3f} s")
            self._check_drift(job, result, now)
        del self._jobs[job.request.request_id]
        session.busy, session.last_used = False, now
        if session.pending:
            self._start(session.pending.popleft(), now)
        elif not session.keep:
            self._release(job.session_id)
        elif reason == CANCELLED:  # kept: its caches go now, its next request replays the conversation
            self._send_release(session.chain_session_id(job.session_id))

    def _final(self, job: Job, now: float, reason: str, error: tuple[ResultError, str] | None,
               session: SessionState) -> Result:
        code, message = error or (ResultError.NONE, "")
        return Result(
            job.request.request_id, self._next_chunk(job), text="" if error else job.stream.flush(), final=True,
            finish_reason=reason, error_code=code, error_message=message,
            session_id=job.session_id if session.keep else "",
            time_to_first_token_s=job.first_token_at - job.started if job.first_token_at is not None else 0.0,
            timings=self._timings(job, now), reply_to=job.reply_to, policy=job.flow.policy, degraded=job.degraded,
            drafted=job.drafted, accepted=job.accepted, verify_passes=job.verify_passes,
        )

    def _check_drift(self, job: Job, result: Result, now: float) -> None:
        """Warn when the request's decode per token drifted from the plan's expected figure (chain steps only:
        the other policies' steps are not what the plan prices)."""
        if job.flow.policy != "chain" or job.degraded or job.replayed or job.retries:
            return
        measured = decode_s_per_token(now - job.started, result.time_to_first_token_s, len(job.stream.ids))
        warning = None if measured is None else self._drift.check(self.expected_token_s, measured, now)
        if warning:
            self._log("warning", f"request {job.request.request_id}: {warning}")

    # -- failover -------------------------------------------------------------------------------------------------

    def _chain_failed(self, job: Job, output: ChainOutput, now: float) -> None:
        if output.error_code == ChainError.SESSION_LOST and not job.replayed:
            job.replayed = True
            self._replay(job, output.error_message, now)
            return
        code = {ChainError.BAD_INPUT: ResultError.BAD_REQUEST,
                ChainError.SESSION_LOST: ResultError.MODULE_UNAVAILABLE}.get(output.error_code, ResultError.INTERNAL)
        self._finish(job, now, "error", (code, output.error_message))

    def _replay(self, job: Job, why: str, now: float) -> None:
        """Send everything the session holds and the step in flight again, on a fresh chain session."""
        session = self._sessions[job.session_id]
        job.decided_early.clear()
        if not job.in_flight:  # waited before its first step: start it the ordinary way, caches rebuilt
            session.needs_reset = True
            self._start(job, now)
            return
        undrafted = job.in_flight if job.drafting else job.in_flight[:len(job.in_flight) - len(job.drafts)]
        everything = session.conversation.tokens + undrafted
        self._send_release(session.chain_session_id(job.session_id))  # what the old chain session left behind
        session.attempt += 1
        session.conversation.tokens = []
        self._log("warning", f"request {job.request.request_id}: {why}; replaying {len(everything)} tokens")
        self._send(job, now, everything, position=0, reset=True, route=self._route(job))

    def _probe(self, now: float) -> None:
        """Send a probe through the chain; the first to come back says it is connected (``chain_output``)."""
        self._probe_sent_at = now
        self._out.append(ChainStep(self._probe_prefix + uuid.uuid4().hex, release=True))

    def _degrade_stalled(self, now: float) -> None:
        """Requests that allow it and wait too long for the chain (a step unanswered, or held for a failover) go on
        with the robot's exit alone."""
        patience = self.flows.degrade_after_s
        for job in list(self._jobs.values()):
            if not job.flow.allow_degraded or job.flow.policy == "device":
                continue
            if job.waiting_since is not None and job in self._sessions[job.session_id].pending:
                continue  # queued behind its session's request: it starts after that one
            if job.waiting_since is not None or (job.sent_at is not None and now - job.sent_at > patience):
                self._chain_ready = False  # probe: until the chain answers, new requests start on the exit
                job.waiting_since, job.degraded = None, True
                job.flow = replace(job.flow, policy="device")
                self._replay(job, f"the chain did not answer step {job.step} in {patience} s: the robot's exit "
                             "answers the rest (degraded)", now)

    def _resume(self, now: float) -> None:
        """The chain is back: (re)start every request that waited for it."""
        for job in [j for j in self._jobs.values() if j.waiting_since is not None]:
            job.waiting_since = None
            self._replay(job, "the chain is back", now)

    def _hold(self, job: Job, now: float) -> None:
        """Keep a request in flight until the chain is connected again; _resume replays it."""
        job.sent_at, job.waiting_since = None, now

    # -- sessions and actions -------------------------------------------------------------------------------------

    def _awaiting(self, output: ChainOutput) -> Job | None:
        """The request whose current chain session sent ``output`` (None for a late packet of an old one)."""
        job = self._jobs.get(output.request_id)
        if job is None or job.waiting_since is not None:
            return None
        return job if output.session_id == self._sessions[job.session_id].chain_session_id(job.session_id) else None

    def _malformed(self, what: str, output: ChainOutput) -> bool:
        problem = output.problem or ("" if output.release or output.error_code or output.tokens else "no tokens")
        if problem:
            self._log("warning", f"{what} for request '{output.request_id}' step {output.step} dropped: {problem}")
        return bool(problem)

    def _not_awaited(self, what: str, output: ChainOutput) -> None:
        self._log("warning", f"{what} for request '{output.request_id}' step {output.step} that is not awaited"
                  + (f": {output.error_message}" if output.error_code else ""))

    def _release(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._send_release(session.chain_session_id(session_id))

    def _send_release(self, chain_session_id: str) -> None:
        self._out.append(ChainStep(chain_session_id, release=True))

    def _next_chunk(self, job: Job) -> int:
        job.chunks += 1
        return job.chunks - 1

    def _timings(self, job: Job, now: float) -> tuple[Stage, ...]:
        total = now - job.started
        computed = sum(job.module_seconds.values())
        return (*(Stage(stage, host, seconds) for (stage, host), seconds in job.module_seconds.items()),
                Stage("transfer_and_queueing", "", max(total - computed, 0.0)), Stage("total", "", total))

    def _log(self, level: str, text: str) -> None:
        self._out.append(Log(level, text))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out
