"""What a standby gateway holds (``edge_lam.chain.standby``), with no ROS: requests held until the active gateway's
final, the chunks it streamed kept for a takeover, and requests without an id released one per anonymous final."""

from __future__ import annotations

from edge_lam.chain.requests import Request, Result, ResultError
from edge_lam.chain.standby import ANONYMOUS, StandbyLedger


def chunk(request_id: str, index: int, *tokens: int, final: bool = False) -> Result:
    return Result(request_id, index, tuple(tokens), text="".join(f"<{t}>" for t in tokens), final=final,
                  finish_reason="length" if final else "")


def test_a_request_the_active_gateway_finished_is_forgotten_and_its_waiter_gets_the_whole_answer():
    ledger = StandbyLedger()
    waiter, topic = object(), None
    assert ledger.hold(Request("call"), waiter) is None
    assert ledger.hold(Request("topic"), topic) is None
    assert len(ledger) == 2
    assert ledger.progress(chunk("call", 0, 1, 2)) == []
    assert ledger.progress(chunk("topic", 0, 7, final=True)) == []  # nobody waits for a topic request
    ((whom, answer),) = ledger.progress(chunk("call", 1, 3, final=True))
    assert whom is waiter and answer.final and answer.token_ids == (1, 2, 3) and answer.text == "<1><2><3>"
    assert len(ledger) == 0 and ledger.take_over() == []


def test_a_takeover_gets_what_is_held_in_order_with_the_tokens_already_streamed():
    ledger = StandbyLedger()
    ledger.progress(chunk("late", 0, 9))  # the active gateway's chunk came before the request did
    for request_id in ("a", "late", ""):
        ledger.hold(Request(request_id))
    ledger.progress(chunk("a", 0, 4, 5))
    ledger.progress(chunk("a", 1, 6))
    held = ledger.take_over()
    assert [h.request.request_id for h in held] == ["a", "late", ""]
    assert [h.streamed for h in held] == [(4, 5, 6), (9,), ()]
    assert [len(h.chunks) for h in held] == [2, 1, 0]
    assert len(ledger) == 0


def test_a_request_answered_before_it_reached_the_standby_is_not_held():
    ledger = StandbyLedger()
    ledger.progress(chunk("quick", 0, 1, final=True))
    answer = ledger.hold(Request("quick"), object())
    assert answer is not None and answer.token_ids == (1,)
    assert len(ledger) == 0


def test_an_anonymous_final_releases_the_oldest_anonymous_call_with_an_error():
    ledger = StandbyLedger()
    first, second = object(), object()
    ledger.hold(Request(""), first)
    ledger.hold(Request(""), second)
    assert ledger.progress(chunk("someone-named", 0, 1, final=True)) == []  # not anonymous: releases nothing
    ((whom, answer),) = ledger.progress(chunk(ANONYMOUS + "x", 0, 1, final=True))
    assert whom is first and answer.final and answer.error_code == ResultError.INTERNAL
    assert [h.waiter for h in ledger.take_over()] == [second]


def test_what_it_remembers_of_requests_it_does_not_hold_is_bounded():
    ledger = StandbyLedger(remember=4)
    for i in range(100):
        ledger.progress(chunk(f"r{i}", 0, i))
        ledger.progress(chunk(f"f{i}", 0, i, final=True))
    assert len(ledger._unclaimed) == 4 and len(ledger._finished) == 4


def test_the_chunks_kept_per_request_are_bounded_but_its_final_still_counts():
    ledger = StandbyLedger(max_chunks=3)
    waiter = object()
    ledger.hold(Request("r"), waiter)
    for i in range(10):
        ledger.progress(chunk("r", i, i))
        ledger.progress(chunk("unknown", i, i))
    assert len(ledger._unclaimed["unknown"]) == 3
    ((whom, answer),) = ledger.progress(chunk("r", 10, final=True))
    assert whom is waiter and answer.token_ids == (0, 1, 2)


def test_a_chunk_seen_on_both_the_results_and_the_progress_topic_counts_once():
    ledger = StandbyLedger()
    first, second = object(), object()
    ledger.hold(Request("streamed"))
    ledger.hold(Request(""), first)
    ledger.hold(Request(""), second)
    # The results topic runs ahead of the progress topic: the killed gateway's last chunk reached only its caller.
    for index in range(3):
        ledger.progress(chunk("streamed", index, index))
    for index in range(2):
        ledger.progress(chunk("streamed", index, index))
    # An anonymous request's final on both topics releases one anonymous call, not two.
    assert len(ledger.progress(chunk(ANONYMOUS + "x", 0, 1, final=True))) == 1
    assert ledger.progress(chunk(ANONYMOUS + "x", 0, 1, final=True)) == []
    held = ledger.take_over()
    assert [(h.request.request_id, h.streamed) for h in held] == [("streamed", (0, 1, 2)), ("", ())]
    assert held[1].waiter is second
