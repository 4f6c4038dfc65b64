"""The transport chooser's decisions (edge_lam.fleet.transport): pure, no ROS."""

from __future__ import annotations

import pytest

from edge_lam.descriptors import Advert, Link
from edge_lam.fleet.transport import (
    DEFAULT_PROFILES,
    StreamProfile,
    candidates,
    choose,
    choose_from_adverts,
    parse_transports,
)

IMAGE, ODOMETRY = DEFAULT_PROFILES["image"], DEFAULT_PROFILES["odometry"]
FAST = Link("robot", "edge", 0.020, 100e6)
SLOW = Link("robot", "edge", 0.050, 5e6)
THIN = Link("robot", "edge", 0.100, 1e6)


def test_a_fast_link_takes_raw_frames_when_the_robot_is_slow():
    for on_robot in (True, False):
        decision = choose(IMAGE, FAST, period_s=5.0, robot_scale=0.25, reporter_on_robot=on_robot)
        assert decision.choice == "raw" and decision.served
        assert decision.latency_s["raw"] < decision.latency_s["tokens"]
        assert decision.reason.startswith("raw ")


def test_a_robot_as_fast_as_the_edge_keeps_its_tokens_on_a_fast_link():
    assert choose(IMAGE, FAST, period_s=5.0, robot_scale=1.0).choice == "tokens"


def test_a_slow_link_keeps_tokens_and_says_raw_frames_would_not_fit():
    for link in (SLOW, THIN):
        decision = choose(IMAGE, link, period_s=5.0, robot_scale=0.1)
        assert decision.choice == "tokens"
        assert decision.link_share["raw"] > 0.5 and "over capacity" in decision.reason


def test_raw_frames_over_capacity_lose_even_when_they_would_be_faster():
    fast_but_narrow = Link("robot", "edge", 0.001, 6e6)  # a frame in 65 ms, but 65% of the link for the stream
    decision = choose(IMAGE, fast_but_narrow, period_s=5.0, robot_scale=0.01)
    assert decision.latency_s["raw"] < decision.latency_s["tokens"]
    assert decision.choice == "tokens"
    assert choose(IMAGE, fast_but_narrow, period_s=5.0, robot_scale=0.01, max_link_share=0.9).choice == "raw"


def test_odometry_is_always_tokens_its_encoder_costs_nothing():
    for link in (FAST, SLOW, THIN):
        for scale in (0.1, 1.0):
            assert choose(ODOMETRY, link, period_s=5.0, robot_scale=scale).choice == "tokens"


def test_when_nothing_fits_the_smallest_traffic_wins_and_the_reason_says_so():
    tiny = Link("robot", "edge", 0.5, 50.0)  # 50 bit/s: not even a line per report fits half of it
    decision = choose(ODOMETRY, tiny, period_s=5.0, robot_scale=1.0)
    assert decision.choice == "tokens" and decision.reason.startswith("nothing fits")


def test_equal_latency_goes_to_fewer_bytes():
    same = StreamProfile("x", raw_hz=20.0, raw_bytes=100, tokens_hz=1.0, tokens_bytes=100, line_bytes=10,
                         encode_s=0.0)
    decision = choose(same, FAST, period_s=5.0, robot_scale=1.0, reporter_on_robot=False)
    assert decision.latency_s["raw"] == pytest.approx(decision.latency_s["tokens"])
    assert decision.choice == "tokens"


def test_embeddings_are_priced_but_never_picked_by_auto_while_not_served():
    for link in (FAST, SLOW, THIN):
        for scale in (0.1, 1.0):
            decision = choose(IMAGE, link, period_s=5.0, robot_scale=scale)
            assert "embeddings" in decision.bytes_per_report and decision.choice != "embeddings"
    forced = choose(IMAGE, SLOW, period_s=5.0, robot_scale=1.0, transport="embeddings")
    assert forced.choice == "embeddings" and not forced.served and "set by the parameter" in forced.reason


def test_bytes_per_report_count_every_crossing():
    priced = candidates(IMAGE, period_s=5.0, robot_scale=0.25)
    frames = 50 * IMAGE.raw_bytes
    assert priced["raw"].bytes_per_report == frames + 50 * IMAGE.tokens_bytes + IMAGE.line_bytes  # tokens come back
    assert priced["tokens"].bytes_per_report == IMAGE.line_bytes
    assert priced["embeddings"].bytes_per_report == IMAGE.embedding_bytes
    at_edge = candidates(IMAGE, period_s=5.0, robot_scale=0.25, reporter_on_robot=False)
    assert at_edge["raw"].bytes_per_report == frames
    assert at_edge["tokens"].bytes_per_report == 50 * IMAGE.tokens_bytes
    assert "embeddings" not in candidates(ODOMETRY, period_s=5.0, robot_scale=1.0)


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="must be one of"):
        choose(IMAGE, FAST, period_s=5.0, robot_scale=1.0, transport="pixels")
    with pytest.raises(ValueError, match="has no embeddings"):
        choose(ODOMETRY, FAST, period_s=5.0, robot_scale=1.0, transport="embeddings")
    with pytest.raises(ValueError, match="> 0"):
        choose(IMAGE, FAST, period_s=0.0, robot_scale=1.0)
    with pytest.raises(ValueError, match="rates, sizes"):
        StreamProfile("x", raw_hz=0.0, raw_bytes=1, tokens_hz=1, tokens_bytes=1, line_bytes=1, encode_s=0.0)


def advert(host: str, role: str, gflops: float, links: tuple[Link, ...] = ()) -> Advert:
    return Advert(host, role, gflops, 0.0, 2**30, 2**30, links)


def test_from_adverts_the_link_and_the_compute_ratio_decide():
    edge = advert("edge", "edge", 40.0)
    slow_robot = advert("robot", "robot", 10.0, (Link("robot", "edge", 0.020, 100e6),))
    assert choose_from_adverts(IMAGE, slow_robot, edge, period_s=5.0).choice == "raw"
    narrow = advert("robot", "robot", 10.0, (Link("robot", "edge", 0.050, 5e6),))
    assert choose_from_adverts(IMAGE, narrow, edge, period_s=5.0).choice == "tokens"
    # Only the edge measured the link: that estimate stands for both directions.
    edge_knows = advert("edge", "edge", 40.0, (Link("edge", "robot", 0.020, 100e6),))
    assert choose_from_adverts(IMAGE, advert("robot", "robot", 10.0), edge_knows, period_s=5.0).choice == "raw"


def test_from_adverts_without_a_link_figure_auto_keeps_tokens():
    decision = choose_from_adverts(IMAGE, advert("robot", "robot", 1.0), advert("edge", "edge", 40.0), period_s=5.0)
    assert decision.choice == "tokens" and "no advertised link" in decision.reason
    forced = choose_from_adverts(IMAGE, advert("robot", "robot", 1.0), advert("edge", "edge", 40.0), period_s=5.0,
                                 transport="raw")
    assert forced.choice == "raw"


def test_parse_transports():
    assert parse_transports(["image=raw"], ["image", "odometry"]) == {"image": "raw", "odometry": "tokens"}
    assert parse_transports([], ["image"]) == {"image": "tokens"}
    with pytest.raises(ValueError, match="STREAM=CHOICE"):
        parse_transports(["image:raw"], ["image"])
    with pytest.raises(ValueError, match="no stream 'scan'"):
        parse_transports(["scan=raw"], ["image"])
