"""The transport chooser's decisions (edge_lam.fleet.transport) and the demo graph's placement of encoders by
transport: pure, no ROS."""

from __future__ import annotations

import pathlib

import pytest

from edge_lam.demo.graph import (
    DemoConfig,
    HostSpec,
    SensorTopic,
    demo_processes,
    encoder_processes,
    fleet_processes,
    replay_processes,
    resolve_transports,
)
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
NO_EMBEDDING = StreamProfile("scan", raw_hz=10.0, raw_bytes=3000, tokens_hz=10.0, tokens_bytes=200, line_bytes=80,
                             encode_s=5e-5)


def test_a_fast_link_takes_raw_frames_when_the_robot_is_slow():
    # With the reporter on the robot the tokens come back and the prompt goes out again: the robot must be slower.
    for on_robot, scale in ((False, 0.25), (True, 0.1)):
        decision = choose(IMAGE, FAST, period_s=5.0, robot_scale=scale, reporter_on_robot=on_robot)
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
    assert "embeddings" not in candidates(NO_EMBEDDING, period_s=5.0, robot_scale=1.0)


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="must be one of"):
        choose(IMAGE, FAST, period_s=5.0, robot_scale=1.0, transport="pixels")
    with pytest.raises(ValueError, match="has no embeddings"):
        choose(NO_EMBEDDING, FAST, period_s=5.0, robot_scale=1.0, transport="embeddings")
    with pytest.raises(ValueError, match="> 0"):
        choose(IMAGE, FAST, period_s=0.0, robot_scale=1.0)
    with pytest.raises(ValueError, match="rates, sizes"):
        StreamProfile("x", raw_hz=0.0, raw_bytes=1, tokens_hz=1, tokens_bytes=1, line_bytes=1, encode_s=0.0)


def advert(host: str, role: str, gflops: float, links: tuple[Link, ...] = ()) -> Advert:
    return Advert(host, role, gflops, 0.0, 2**30, 2**30, links)


def test_from_adverts_the_link_and_the_compute_ratio_decide():
    edge = advert("edge", "edge", 40.0)
    slow_robot = advert("robot", "robot", 4.0, (Link("robot", "edge", 0.020, 100e6),))
    assert choose_from_adverts(IMAGE, slow_robot, edge, period_s=5.0).choice == "raw"
    narrow = advert("robot", "robot", 10.0, (Link("robot", "edge", 0.050, 5e6),))
    assert choose_from_adverts(IMAGE, narrow, edge, period_s=5.0).choice == "tokens"
    # Only the edge measured the link: that estimate stands for both directions.
    edge_knows = advert("edge", "edge", 40.0, (Link("edge", "robot", 0.020, 100e6),))
    assert choose_from_adverts(IMAGE, advert("robot", "robot", 4.0), edge_knows, period_s=5.0).choice == "raw"


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


LIB = pathlib.Path("/opt/lib/edge_lam")
CAMERA = SensorTopic(pathlib.Path("cam.mcap"), "/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", 6.0)
ODOM = SensorTopic(pathlib.Path("run.mcap"), "/odom", "nav_msgs/msg/Odometry", 97.0)


def demo_config(**transports: str) -> DemoConfig:
    return DemoConfig(robot_id="tb3", hosts=(HostSpec.parse("robot:robot:0.25:320"), HostSpec.parse("edge:edge:1:480")),
                      model="smollm2-135m-instruct", sensors=(CAMERA, ODOM), period_s=5.0, max_new_tokens=40,
                      start_offset_s=0.0, params_file=pathlib.Path("demo.yaml"), transports=transports)


def test_the_demo_runs_an_encoder_on_the_edge_for_raw_in_the_robots_namespace():
    specs = {s.name: s for s in demo_processes(demo_config(image="raw"), LIB)}
    camera, odometry = specs["camera_encoder[/camera/image_raw/compressed]"], specs["odometry_encoder[/odom]"]
    assert camera.host == "edge" and odometry.host == "robot"
    argv = " ".join(camera.argv)
    assert "__ns:=/tb3" in argv and "compressed_topic:=camera/image_raw/compressed" in argv
    assert "embedding_dtype:=none" in argv  # its tokens go back to the robot's reporter: words only
    assert {s.host for s in replay_processes(demo_config(image="raw"), LIB)} == {"robot"}
    tokens = {s.name: s for s in demo_processes(demo_config(), LIB)}
    assert tokens["camera_encoder[/camera/image_raw/compressed]"].host == "robot"
    assert "embedding_dtype" not in " ".join(tokens["camera_encoder[/camera/image_raw/compressed]"].argv)


def test_the_demo_refuses_transports_it_cannot_serve_and_decides_auto_before_starting_encoders():
    with pytest.raises(ValueError, match="not served"):
        demo_config(image="embeddings")
    with pytest.raises(ValueError, match="no such stream"):
        demo_config(scan="raw")
    auto = demo_config(image="auto")
    assert auto.needs_adverts and not demo_config(image="raw").needs_adverts
    with pytest.raises(ValueError, match="decide it first"):
        demo_processes(auto, LIB)
    assert not any("encoder" in s.name for s in fleet_processes(auto, LIB))


def test_the_demo_resolves_auto_from_the_adverts():
    edge = advert("edge", "edge", 40.0)
    robot = advert("robot", "robot", 4.0, (Link("robot", "edge", 0.020, 100e6),))
    decisions = resolve_transports(demo_config(image="auto", odometry="auto"), {"robot": robot, "edge": edge})
    assert decisions["image"].choice == "raw" and decisions["odometry"].choice == "tokens"
    specs = encoder_processes(demo_config(), LIB, {m: d.choice for m, d in decisions.items()})
    assert {s.name: s.host for s in specs} == {"camera_encoder[/camera/image_raw/compressed]": "edge",
                                               "odometry_encoder[/odom]": "robot"}
    narrow = advert("robot", "robot", 4.0, (Link("robot", "edge", 0.050, 5e6),))
    assert resolve_transports(demo_config(image="auto"), {"robot": narrow, "edge": edge})["image"].choice == "tokens"
    assert resolve_transports(demo_config(), {"robot": robot, "edge": edge})["image"].reason == "the default"
    unknown = resolve_transports(demo_config(image="auto"), {"edge": edge})["image"]
    assert unknown.choice == "tokens" and "no robot and edge adverts" in unknown.reason
