"""The gateway's core on a fake clock, with the real tokenizer and synthetic chain outputs: the chain steps it sends
(sessions, positions, resets, releases), the results it gives (one final each) and how it fails over, with no
processes and no ROS."""

from __future__ import annotations

from dataclasses import replace

import pytest
from edge_lam_msgs.msg import ChainPacket, InferenceResult

from edge_lam.chain.gateway import PROBE_INTERVAL_S, Action, GatewayCore, Timeouts
from edge_lam.chain.requests import (
    CANCELLED,
    ChainError,
    ChainOutput,
    ChainStep,
    Log,
    Options,
    Request,
    Result,
    ResultError,
    merge,
)
from edge_lam.descriptors import Stage

MODEL = "smollm2-135m-instruct"
EOS = 2  # SmolLM2-Instruct's <|im_end|>
HEAD = Stage("module:head", "edge1", 0.01)
TIMEOUTS = Timeouts(step_s=3.0, failover_s=20.0, max_retries=1, session_idle_s=100.0)


class Gateway:
    """A core, a fake clock and every action it returned."""

    def __init__(self) -> None:
        self.core = GatewayCore.for_model(MODEL, 1024, 2048, TIMEOUTS)
        self.tokenizer = self.core._tokenizer
        self.now = 1000.0
        self.actions: list[Action] = []

    def _record(self, actions: list[Action]) -> list[Action]:
        self.actions += actions
        return actions

    def request(self, prompt: str = "", max_new_tokens: int = 8, **fields) -> list[Action]:
        options = fields.pop("options", Options(max_new_tokens=max_new_tokens))
        return self._record(self.core.request(Request(prompt=prompt, options=options, **fields), self.now))

    def output(self, output: ChainOutput) -> list[Action]:
        return self._record(self.core.chain_output(output, self.now))

    def tick(self, after_s: float = 0.0) -> list[Action]:
        self.now += after_s
        return self._record(self.core.tick(self.now))

    def plan(self, key: tuple[str, int]) -> list[Action]:
        return self._record(self.core.plan(key, self.now))

    def cancel(self, request_id: str) -> list[Action]:
        return self._record(self.core.cancel(request_id, self.now))

    def connect(self) -> list[Action]:
        """Wait for the core's next probe and pass it back, as the chain's last module does."""
        self.now += PROBE_INTERVAL_S + 0.1
        (probe,) = steps(self.tick())
        assert probe.release and probe.session_id.startswith("probe-")
        return self.output(ChainOutput("", probe.session_id, release=True))

    def answer(self, step: ChainStep, token: int, after_s: float = 0.05) -> list[Action]:
        self.now += after_s
        return self.output(ChainOutput(step.request_id, step.session_id, step.step, tokens=(token,), timings=(HEAD,)))

    def generate(self, step: ChainStep, tokens: list[int]) -> list[Action]:
        """Answer ``step`` and every step it leads to with ``tokens`` until the request ends; what the last answer
        returned."""
        for token in tokens:
            out = self.answer(step, token)
            following = [s for s in steps(out) if s.request_id == step.request_id and not s.release]
            if not following:
                return out
            step = following[0]
        return out

    def results(self, request_id: str) -> list[Result]:
        return [r for r in results(self.actions) if r.request_id == request_id]

    def assert_one_final_each(self) -> None:
        """Every request answered got numbered chunks and exactly one final, the last."""
        for request_id in {r.request_id for r in results(self.actions)}:
            chunks = self.results(request_id)
            assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True], request_id
            assert [c.chunk_index for c in chunks] == list(range(len(chunks))), request_id


def steps(actions: list[Action]) -> list[ChainStep]:
    return [a for a in actions if isinstance(a, ChainStep)]


def results(actions: list[Action]) -> list[Result]:
    return [a for a in actions if isinstance(a, Result)]


def logs(actions: list[Action], level: str) -> list[str]:
    return [a.text for a in actions if isinstance(a, Log) and a.level == level]


@pytest.fixture
def gateway() -> Gateway:
    gateway = Gateway()
    gateway.connect()
    return gateway


def chat_ids(gateway: Gateway, *messages: dict[str, str]) -> list[int]:
    return list(gateway.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))


def test_the_error_codes_are_the_messages():
    for codes, msg in ((ResultError, InferenceResult), (ChainError, ChainPacket)):
        constants = {name.removeprefix("ERROR_"): getattr(msg, name) for name in dir(msg) if name.startswith("ERROR_")}
        assert {code.name: code.value for code in codes} == constants


def test_requests_are_refused_until_a_probe_came_back_through_the_chain():
    gateway = Gateway()
    refused = gateway.request("Hi", request_id="early")
    assert not steps(refused)
    (result,) = results(refused)
    assert result.final and result.error_code == ResultError.MODULE_UNAVAILABLE and result.finish_reason == "error"

    (probe,) = steps(gateway.tick())
    assert probe.release and not probe.input_ids
    assert not steps(gateway.tick(PROBE_INTERVAL_S / 2))  # one probe per interval
    (again,) = steps(gateway.tick(PROBE_INTERVAL_S))
    assert again.session_id != probe.session_id
    assert gateway.output(ChainOutput("", "someone-elses-session", release=True)) == []  # not a probe of ours
    assert results(gateway.request("Hi"))[0].error_code == ResultError.MODULE_UNAVAILABLE

    assert logs(gateway.output(ChainOutput("", probe.session_id, release=True)), "info") == [
        "the chain is connected end to end: serving"]
    assert not steps(gateway.tick(PROBE_INTERVAL_S * 2))  # connected: no more probes
    (step,) = steps(gateway.request("Hi", request_id="served"))
    assert step.request_id == "served" and step.position == 0 and not step.release and step.input_ids
    gateway.assert_one_final_each()


def test_a_request_is_prefilled_then_stepped_token_by_token_and_gets_one_final(gateway):
    prompt = chat_ids(gateway, {"role": "user", "content": "What is a robot?"})
    tokens = gateway.tokenizer.encode(" A robot is a machine that moves.")[:5]
    started = gateway.now
    (prefill,) = steps(gateway.request("What is a robot?", max_new_tokens=5, request_id="r1"))
    # A new session: its caches start at position 0, with nothing to drop.
    assert (prefill.request_id, prefill.step, prefill.position, prefill.reset, prefill.release) == ("r1", 0, 0, False,
                                                                                                  False)
    assert list(prefill.input_ids) == prompt and prefill.options.max_new_tokens == 5
    session = prefill.session_id
    assert session

    step = prefill
    for i, token in enumerate(tokens[:-1]):
        out = gateway.answer(step, token)
        # The chain starts on the next token before this one's chunk goes out.
        assert [type(a) for a in out] == [ChainStep, Result]
        step, chunk = out
        assert (step.session_id, step.step, step.position, step.reset, step.input_ids) == (
            session, i + 1, len(prompt) + i, False, (token,))
        assert chunk.token_ids == (token,) and chunk.chunk_index == i and not chunk.final
        assert chunk.session_id == session

    last = gateway.answer(step, tokens[-1])
    (chunk, final) = results(last)
    assert chunk.token_ids == (tokens[-1],)
    assert final.final and final.finish_reason == "length" and final.error_code == ResultError.NONE
    assert final.session_id == ""  # not kept
    (release,) = steps(last)  # the session ended: the shards drop its caches
    assert release.release and release.session_id == session and not release.input_ids
    chunks = gateway.results("r1")
    assert "".join(c.text for c in chunks) == gateway.tokenizer.decode(tokens)
    assert final.time_to_first_token_s == pytest.approx(0.05)
    timings = {t.stage: t for t in final.timings}
    total = gateway.now - started
    assert timings["total"].seconds == pytest.approx(total)
    assert timings["module:head"] == Stage("module:head", "edge1", pytest.approx(0.05))
    assert timings["transfer_and_queueing"].seconds == pytest.approx(total - 0.05)
    assert merge(chunks).token_ids == tuple(tokens) and merge(chunks).text == "".join(c.text for c in chunks)
    gateway.assert_one_final_each()


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"prompt": " "}, ResultError.BAD_REQUEST, "empty request"),
    ({"prompt": "Hi", "max_new_tokens": 0}, ResultError.BAD_REQUEST, "max_new_tokens"),
    ({"input_token_ids": (1, 49152)}, ResultError.BAD_REQUEST, "vocabulary"),
    ({"prompt": "Hi", "options": Options(do_sample=True, temperature=1e-45)}, ResultError.BAD_REQUEST, "temperature"),
    ({"prompt": "Hi", "options": Options(do_sample=True, top_p=0.0, temperature=0.0)}, ResultError.BAD_REQUEST,
     "top_p"),
    ({"prompt": "x" * 40_000}, ResultError.BAD_REQUEST, "max_prompt_chars"),
    ({"prompt": "Hi", "options": Options(stop=("END",) * 17)}, ResultError.BAD_REQUEST, "max_stop_strings"),
    ({"prompt": "Hi", "options": Options(stop=("E" * 257,))}, ResultError.BAD_REQUEST, "max_stop_chars"),
    ({"prompt": "Hi", "model_id": "gpt-17"}, ResultError.BAD_REQUEST, "serves"),
    ({"prompt": "Hi", "session_id": "no-such-session"}, ResultError.UNKNOWN_SESSION, "no session"),
    ({"prompt": "Hi", "options": Options(adapter="fleet.v1")}, ResultError.BAD_REQUEST, "adapter name"),
])
def test_bad_requests_are_refused_at_once(gateway, fields, code, message):
    out = gateway.request(**fields)
    assert not steps(out)
    (result,) = results(out)
    assert result.final and result.error_code == code and message in result.error_message
    assert result.finish_reason == "error" and not result.token_ids and result.request_id  # an id is made up
    assert logs(out, "warning")


def test_a_request_too_long_for_the_context_is_refused_before_it_reaches_the_chain(gateway):
    out = gateway.request("x " * 2100, request_id="long")
    (result,) = results(out)
    assert result.final and result.error_code == ResultError.BAD_REQUEST
    assert "exceed the context" in result.error_message
    assert [s.release for s in steps(out)] == [True]  # only the release of the session it would have made


def test_a_request_id_in_flight_is_not_taken_twice(gateway):
    (step,) = steps(gateway.request("Hi", request_id="twice"))
    (refused,) = results(gateway.request("Hello", request_id="twice"))
    assert refused.final and "already being answered" in refused.error_message
    gateway.generate(step, [EOS])  # the first one is still answered, to its end
    assert [r.finish_reason for r in gateway.results("twice") if r.final] == ["error", "stop"]


def test_requests_of_a_busy_session_wait_their_turn_and_continue_its_caches(gateway):
    first = {"role": "user", "content": "My robot is called Rolf."}
    (prefill,) = steps(gateway.request(first["content"], request_id="turn1", keep_session=True))
    reply = gateway.tokenizer.encode("Hello Rolf.")
    step, chunk = gateway.answer(prefill, reply[0])
    session = chunk.session_id
    assert session == prefill.session_id

    queued = gateway.request("What is my robot called?", request_id="turn2", session_id=session)
    assert not steps(queued) and not results(queued)  # waits behind turn1

    out = gateway.generate(step, [*reply[1:], EOS])
    final = results(out)[-1]
    assert final.request_id == "turn1" and final.finish_reason == "stop"
    (turn2,) = steps(out)  # turn 2 starts as turn 1 ends, extending the caches
    second = chat_ids(gateway, first, {"role": "assistant", "content": "Hello Rolf."},
                      {"role": "user", "content": "What is my robot called?"})
    held = len(prefill.input_ids) + len(reply)  # the prompt and every answer token but the last (EOS)
    assert (turn2.request_id, turn2.session_id, turn2.position, turn2.reset) == ("turn2", session, held, False)
    assert list(turn2.input_ids) == second[held:]

    out = gateway.generate(turn2, [EOS])
    assert results(out)[-1].session_id == ""  # turn 2 did not keep it: the session ends
    (release,) = steps(out)
    assert release.release and release.session_id == session
    (unknown,) = results(gateway.request("Hi", session_id=session))
    assert unknown.error_code == ResultError.UNKNOWN_SESSION
    gateway.assert_one_final_each()


def test_a_kept_session_asked_with_another_adapter_is_replayed_with_it(gateway):
    (prefill,) = steps(gateway.request("My robot is called Rolf.", request_id="base", keep_session=True))
    assert prefill.options.adapter == ""
    session = results(gateway.generate(prefill, [EOS]))[-1].session_id
    asked = Options(max_new_tokens=8, adapter="fleet")
    (adapted,) = steps(gateway.request("What is it called?", request_id="adapted", session_id=session,
                                       keep_session=True, options=asked))
    # the caches hold the base model's states: the whole conversation goes again, with the adapter
    assert (adapted.options.adapter, adapted.position, adapted.reset) == ("fleet", 0, True)
    gateway.generate(adapted, [EOS])
    (same,) = steps(gateway.request("And its colour?", request_id="same", session_id=session, options=asked))
    assert (same.options.adapter, same.reset) == ("fleet", False) and same.position > 0  # the same: continued


def test_a_lost_session_is_replayed_once_on_a_fresh_chain_session_then_fails(gateway):
    tokens = gateway.tokenizer.encode(" Robots move and sense.")
    (prefill,) = steps(gateway.request("Tell me about robots.", request_id="lost", max_new_tokens=20))
    step, _ = gateway.answer(prefill, tokens[0])
    step, _ = gateway.answer(step, tokens[1])
    session = prefill.session_id

    lost = ChainOutput("lost", session, step.step, error_code=ChainError.SESSION_LOST,
                       error_message="head_shard: no cache for the session")
    out = gateway.output(lost)
    assert not results(out) and logs(out, "warning")
    release, replay = steps(out)
    assert release.release and release.session_id == session  # what the old chain session left behind
    assert (replay.session_id, replay.step, replay.position, replay.reset) == (f"{session}~1", step.step, 0, True)
    assert list(replay.input_ids) == [*prefill.input_ids, tokens[0], tokens[1]]

    late = gateway.answer(step, tokens[2])  # a late packet of the old chain session is dropped
    assert not results(late) and not steps(late) and "not awaited" in logs(late, "warning")[0]
    step, chunk = gateway.answer(replay, tokens[2])
    assert chunk.token_ids == (tokens[2],) and (step.session_id, step.position) == (f"{session}~1", len(
        replay.input_ids))

    out = gateway.output(ChainOutput("lost", step.session_id, step.step, error_code=ChainError.SESSION_LOST,
                                     error_message="lost again"))
    (final,) = results(out)  # replayed once only
    assert final.final and final.error_code == ResultError.MODULE_UNAVAILABLE and final.error_message == "lost again"
    assert [s.session_id for s in steps(out)] == [f"{session}~1"] and steps(out)[0].release
    assert [c.token_ids for c in gateway.results("lost")][:3] == [(t,) for t in tokens[:3]]
    gateway.assert_one_final_each()


def test_a_step_timeout_probes_and_replays_on_a_fresh_chain_session(gateway):
    tokens = gateway.tokenizer.encode(" The sea is blue and wide.")
    (prefill,) = steps(gateway.request("Describe the sea.", request_id="slow", max_new_tokens=len(tokens)))
    session = prefill.session_id
    step, _ = gateway.answer(prefill, tokens[0])

    out = gateway.tick(3.1)  # the step got no answer within step_s: probe, and hold the request
    assert not results(out)
    assert "retry 1 of 1" in logs(out, "warning")[0]
    (probe,) = steps(out)
    assert probe.release and probe.session_id.startswith("probe-")

    waiting = gateway.request("Hi", request_id="meanwhile")  # served once the chain is back, not refused
    assert not steps(waiting) and not results(waiting)
    assert not results(gateway.answer(step, tokens[1]))  # late: the step is held, its answer dropped

    out = gateway.output(ChainOutput("", probe.session_id, release=True))
    release, replay, other = steps(out)
    assert release.release and release.session_id == session
    assert (replay.request_id, replay.session_id, replay.step, replay.position, replay.reset) == (
        "slow", f"{session}~1", step.step, 0, True)
    assert list(replay.input_ids) == [*prefill.input_ids, tokens[0]]
    assert (other.request_id, other.position, other.reset) == ("meanwhile", 0, True)

    assert not results(gateway.answer(step, tokens[1]))  # the old chain session's packet, later still: dropped
    out = gateway.generate(replay, tokens[1:])
    assert results(out)[-1].finish_reason == "length" and results(out)[-1].error_code == ResultError.NONE
    assert [t for c in gateway.results("slow") for t in c.token_ids] == tokens
    gateway.generate(other, [EOS])
    gateway.assert_one_final_each()


def test_a_request_that_times_out_more_than_max_retries_ends_with_a_timeout(gateway):
    (prefill,) = steps(gateway.request("Hi", request_id="doomed"))
    gateway.tick(3.1)
    (replay,) = [s for s in steps(gateway.connect()) if not s.release]
    assert replay.session_id == f"{prefill.session_id}~1"
    out = gateway.tick(3.1)
    (final,) = results(out)
    assert final.final and final.error_code == ResultError.TIMEOUT and "no answer" in final.error_message
    assert [s.session_id for s in steps(out) if not s.session_id.startswith("probe-")] == [replay.session_id]
    assert steps(out)[0].release
    assert not results(gateway.answer(replay, EOS))  # too late
    gateway.assert_one_final_each()


def test_a_new_plan_holds_what_is_in_flight_and_replays_it_once_a_probe_is_back(gateway):
    assert gateway.plan(("plan-a", 1)) == []  # the plan in force at start: the first probe covered it
    tokens = gateway.tokenizer.encode(" Left, then right.")
    (prefill,) = steps(gateway.request("Where do I go?", request_id="moving", max_new_tokens=len(tokens)))
    step, _ = gateway.answer(prefill, tokens[0])

    out = gateway.plan(("plan-b", 1))
    assert logs(out, "info") == ["placement plan plan-b v1: probing the chain again"]
    (probe,) = steps(out)  # at once, not at the next tick: every request in flight waits for it
    assert probe.release and probe.session_id.startswith("probe-")
    assert gateway.plan(("plan-b", 1)) == []  # the same plan again changes nothing
    assert not results(gateway.answer(step, tokens[1]))  # held: the answer of the moved chain is not trusted
    out = gateway.output(ChainOutput("", probe.session_id, release=True))
    release, replay = steps(out)
    assert release.release and release.session_id == prefill.session_id
    assert (replay.session_id, replay.step, replay.position, replay.reset) == (
        f"{prefill.session_id}~1", step.step, 0, True)
    assert list(replay.input_ids) == [*prefill.input_ids, tokens[0]]
    gateway.generate(replay, tokens[1:])
    assert [t for c in gateway.results("moving") for t in c.token_ids] == tokens
    assert gateway.results("moving")[-1].finish_reason == "length"
    gateway.assert_one_final_each()


def test_requests_waiting_longer_than_failover_timeout_fail(gateway):
    assert steps(gateway.request("Hi", request_id="held"))
    gateway.tick(3.1)  # held, and the chain does not come back
    gateway.now += 1.0
    assert not steps(gateway.request("Hello", request_id="arrived"))
    out = gateway.tick(18.5)
    assert not results(out)  # held for 19.5 s of the 20 allowed
    out = gateway.tick(0.6)
    finals = {r.request_id: r for r in results(out)}
    assert finals.keys() == {"held"}
    assert finals["held"].error_code == ResultError.MODULE_UNAVAILABLE
    assert "not connected again within 20.0 s" in finals["held"].error_message
    out = gateway.tick(1.0)
    (arrived,) = results(out)
    assert arrived.request_id == "arrived" and arrived.error_code == ResultError.MODULE_UNAVAILABLE
    gateway.assert_one_final_each()


def test_a_kept_session_expires_when_idle_with_a_release(gateway):
    (prefill,) = steps(gateway.request("Hi", request_id="kept", keep_session=True))
    final = results(gateway.generate(prefill, [EOS]))[-1]
    assert final.session_id == prefill.session_id
    assert not [s for s in steps(gateway.tick(99.0)) if s.release]  # used 99 s ago: kept (100 s allowed)
    out = gateway.tick(2.0)
    (release,) = steps(out)
    assert release.release and release.session_id == prefill.session_id
    assert logs(out, "info") == [f"session {prefill.session_id} expired (idle)"]
    (unknown,) = results(gateway.request("Hi again", session_id=prefill.session_id))
    assert unknown.error_code == ResultError.UNKNOWN_SESSION


def test_a_stop_string_ends_the_answer_before_it_and_eos_ends_it_too(gateway):
    tokens = gateway.tokenizer.encode("The robot stops. END of report")
    (prefill,) = steps(gateway.request("Report.", request_id="stopped", options=Options(max_new_tokens=50,
                                                                                         stop=("END",))))
    assert prefill.options.stop == ("END",)
    out = gateway.generate(prefill, tokens)
    final = results(out)[-1]
    assert final.finish_reason == "stop_string" and final.request_id == "stopped"
    assert [s.release for s in steps(out)] == [True]  # no further step: the session is released
    chunks = gateway.results("stopped")
    assert "".join(c.text for c in chunks) == "The robot stops. "
    assert not any("E" in c.text for c in chunks)  # the start of the stop string was never shown
    assert len([c for c in chunks if c.token_ids]) < len(tokens)

    (prefill,) = steps(gateway.request("Hi", request_id="eos"))
    out = gateway.generate(prefill, [gateway.tokenizer.encode("Hi")[0], EOS])
    final = results(out)[-1]
    assert final.finish_reason == "stop" and "<|im_end|>" not in "".join(c.text for c in gateway.results("eos"))
    gateway.assert_one_final_each()


def test_a_cancel_ends_the_request_at_once_and_releases_its_chain_session(gateway):
    tokens = gateway.tokenizer.encode(" One, two, three")
    (prefill,) = steps(gateway.request("Count.", request_id="cancelled", max_new_tokens=50))
    step, _ = gateway.answer(prefill, tokens[0])
    step, _ = gateway.answer(step, tokens[1])

    out = gateway.cancel("cancelled")
    (final,) = results(out)
    assert final.final and final.finish_reason == CANCELLED and final.error_code == ResultError.NONE
    (release,) = steps(out)
    assert release.release and release.session_id == prefill.session_id
    assert merge(gateway.results("cancelled")).token_ids == tuple(tokens[:2])
    assert not results(gateway.answer(step, tokens[2]))  # the step in flight comes back: dropped
    assert gateway.cancel("cancelled") == []  # nothing more to cancel
    gateway.assert_one_final_each()


def test_a_cancel_of_a_queued_request_or_a_kept_session_keeps_the_rest_going(gateway):
    (prefill,) = steps(gateway.request("Hi", request_id="running", keep_session=True))
    _, chunk = gateway.answer(prefill, gateway.tokenizer.encode("Hi")[0])
    gateway.request("And then?", request_id="queued", session_id=chunk.session_id, keep_session=True)
    out = gateway.cancel("queued")
    assert [r.finish_reason for r in results(out)] == [CANCELLED] and not steps(out)  # it never reached the chain

    out = gateway.cancel("running")
    assert results(out)[0].session_id == chunk.session_id  # still kept
    (release,) = steps(out)  # its caches go now
    assert release.release and release.session_id == chunk.session_id
    (again,) = steps(gateway.request("Hi", request_id="next", session_id=chunk.session_id))
    assert again.reset and again.position == 0  # the next request rebuilds them
    gateway.assert_one_final_each()


def test_beyond_max_queued_requests_a_request_is_refused_at_once_as_busy(gateway):
    gateway.core.limits = replace(gateway.core.limits, max_queued_requests=2)  # as a live parameter does
    (first,) = steps(gateway.request("Hi", request_id="a", session_id="", keep_session=True))
    session = results(gateway.generate(first, [EOS]))[-1].session_id
    (running,) = steps(gateway.request("Hi", request_id="b", session_id=session, keep_session=True))
    assert not steps(gateway.request("Hi again", request_id="c", session_id=session))  # behind b: queued
    assert gateway.core.load() == (1, 1)
    refused = gateway.request("Hi", request_id="d")
    assert not steps(refused)
    (busy,) = results(refused)
    assert busy.final and busy.error_code == ResultError.BUSY and "busy" in busy.error_message
    gateway.generate(running, [EOS])  # b ends: c starts, and there is room again
    assert gateway.core.load() == (1, 0)
    assert steps(gateway.request("Hi", request_id="e"))
    gateway.assert_one_final_each()


@pytest.mark.parametrize("output", [
    ChainOutput("r", "s", problem="next_token must be int64 [n], got bfloat16 [1]"),
    ChainOutput("r", "s"),  # no tokens, no error: nothing to take
])
def test_a_malformed_chain_output_is_dropped_and_the_step_still_gets_its_answer(gateway, output):
    (step,) = steps(gateway.request("Hi", request_id="r"))
    dropped = gateway.output(replace(output, session_id=step.session_id, step=step.step))
    assert not results(dropped) and not steps(dropped) and "dropped" in logs(dropped, "warning")[0]
    assert results(gateway.generate(step, [7, EOS]))[-1].finish_reason == "stop"
    gateway.assert_one_final_each()


def test_changed_timeouts_and_flows_apply_to_what_follows(gateway):
    gateway.core.timeouts = replace(gateway.core.timeouts, step_s=1.0)
    gateway.core.flows = replace(gateway.core.flows, draft_tokens=2, policy="speculative")
    assert steps(gateway.request("Hi", request_id="t"))
    assert not logs(gateway.tick(0.5), "warning")
    assert "no answer from the chain in 1.0 s" in logs(gateway.tick(1.0), "warning")[0]
    gateway.output(ChainOutput("", steps(gateway.tick(PROBE_INTERVAL_S + 0.1))[0].session_id, release=True))
    assert results(gateway.request("Hi", request_id="u")) == [] and gateway.core._jobs["u"].flow.draft_tokens == 2


def test_a_resumed_request_prefills_what_was_streamed_and_streams_only_the_rest():
    """A standby taking over: the prompt and the tokens the caller has go through the chain as one prefill, and the
    chunks go on from the index the caller is at, with the same text as an uninterrupted run."""
    tokens = [330, 5345, 314, 253, 3627, 338]  # any six tokens: the text must come out the same either way
    whole = Gateway()
    whole.connect()
    (first,) = steps(whole.request("What is a robot?", max_new_tokens=6, request_id="r"))
    whole.generate(first, tokens)
    uninterrupted = whole.results("r")
    prompt = list(first.input_ids)

    standby = Gateway()
    request = Request("r", prompt="What is a robot?", options=Options(max_new_tokens=6))
    assert results(standby.core.resume(request, tokens[:3], 3, standby.now))[0].error_code == \
        ResultError.MODULE_UNAVAILABLE  # before a takeover it knows of no chain
    (probe,) = steps(standby._record(standby.core.take_over(standby.now)))  # at once, not on the next tick
    assert probe.release and probe.session_id.startswith("probe-")
    standby.actions.clear()
    assert not steps(standby._record(standby.core.resume(request, tokens[:3], 3, standby.now)))  # waits for it
    (prefill,) = steps(standby.output(ChainOutput("", probe.session_id, release=True)))
    assert list(prefill.input_ids) == prompt + tokens[:3] and prefill.position == 0 and prefill.step == 3
    standby.generate(prefill, tokens[3:])
    resumed = standby.results("r")
    assert [c.chunk_index for c in resumed] == [3, 4, 5, 6] and resumed[-1].final
    assert [t for c in resumed for t in c.token_ids] == tokens[3:]
    assert "".join(c.text for c in uninterrupted[:3] + resumed) == "".join(c.text for c in uninterrupted)
    assert resumed[-1].finish_reason == "length" and not resumed[-1].error_code


def test_a_resumed_request_whose_last_streamed_token_ended_it_gets_its_final_at_once():
    standby = Gateway()
    standby.core.take_over(standby.now)
    streamed = [330, 5345, EOS]
    out = standby._record(standby.core.resume(Request("r", prompt="Hi"), streamed, 3, standby.now))
    assert not [s for s in steps(out) if not s.release]  # nothing to generate
    (final,) = results(out)
    assert final.final and final.chunk_index == 3 and final.finish_reason == "stop" and not final.error_code
