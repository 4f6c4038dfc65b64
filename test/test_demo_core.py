"""The demo's pure parts: host specs, the processes it starts, the summary and its consistency check."""

from __future__ import annotations

import pathlib

import pytest

from edge_lam.cli import split_ros_args
from edge_lam.demo.adapter import comparison_questions, comparison_requests
from edge_lam.demo.graph import (
    DemoConfig,
    HostSpec,
    SensorTopic,
    demo_processes,
    replay_processes,
    training_processes,
)
from edge_lam.demo.network import network_env
from edge_lam.demo.summary import DemoRecords, ReportRecord, summarise
from edge_lam.descriptors import Stage
from edge_lam.reporting.timings import report_timings, stages_sum_s
from edge_lam.training.domain_data import DomainSet, QAPair

LIB = pathlib.Path("/opt/lib/edge_lam")
CAMERA = SensorTopic(pathlib.Path("cam.mcap"), "/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", 6.0)
ODOM = SensorTopic(pathlib.Path("run.mcap"), "/odom", "nav_msgs/msg/Odometry", 97.0)


def config(**overrides) -> DemoConfig:
    values = dict(robot_id="tb3", hosts=(HostSpec.parse("robot:robot:0.5:320"), HostSpec.parse("edge:edge:1:480")),
                  model="smollm2-135m-instruct", sensors=(CAMERA, ODOM), period_s=5.0, max_new_tokens=40,
                  start_offset_s=25.0, params_file=pathlib.Path("demo.yaml"))
    return DemoConfig(**{**values, **overrides})


@pytest.mark.parametrize("text", ["robot:robot:0.5", "robot:pilot:1:100", "robot:robot:fast:100",
                                  "robot:robot:0:100", ":edge:1:100"])
def test_a_malformed_host_spec_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match=r"NAME:ROLE|positive|number"):
        HostSpec.parse(text)


def test_a_fleet_of_robots_only_is_refused():
    with pytest.raises(ValueError, match="not a robot"):
        config(hosts=(HostSpec.parse("a:robot:1:100"), HostSpec.parse("b:robot:1:100")))


def test_processes_live_in_the_robot_host_and_fleet_namespaces():
    argv = {spec.name: " ".join(spec.argv) for spec in demo_processes(config(), LIB)}
    assert set(argv) == {"host_agent[robot]", "host_agent[edge]", "coordinator", "gateway",
                         "camera_encoder[/camera/image_raw/compressed]", "odometry_encoder[/odom]", "reporter"}
    assert "__ns:=/robot" in argv["host_agent[robot]"] and "components_namespace:=/edge_lam" in argv["host_agent[edge]"]
    assert f"memory_limit_bytes:={320 * 2**20}" in argv["host_agent[robot]"]
    assert "gateway_host:=edge" in argv["coordinator"] and "__ns:=/edge_lam" in argv["gateway"]
    camera = argv["camera_encoder[/camera/image_raw/compressed]"]
    assert "__ns:=/tb3" in camera and "compressed_topic:=camera/image_raw/compressed" in camera
    assert "image_topic:=''" in camera
    assert argv["odometry_encoder[/odom]"].endswith("-r odom:=odom")
    assert "modalities:=[image,odometry]" in argv["reporter"]
    assert "requests_topic:=/edge_lam/requests" in argv["reporter"]
    assert all(a.startswith(str(LIB)) for a in argv.values())
    assert all("trusted_keys" not in a for a in argv.values())  # trust off unless the config has keys


def test_with_keys_every_fleet_node_signs_with_its_hosts_key():
    argv = {spec.name: " ".join(spec.argv) for spec in demo_processes(config(keys_dir=pathlib.Path("/k")), LIB)}
    for name, host in (("host_agent[robot]", "robot"), ("host_agent[edge]", "edge"), ("coordinator", "edge"),
                       ("gateway", "edge")):
        assert f"signing_key:=/k/{host}.key" in argv[name] and "trusted_keys:=/k" in argv[name], name


def test_with_the_fleets_adapter_every_host_agent_serves_it_and_the_reporter_asks_with_it():
    served = pathlib.Path("/out/fleet_adapter.safetensors")
    argv = {spec.name: " ".join(spec.argv) for spec in demo_processes(config(adapter=served), LIB)}
    assert all(f"adapters:=[fleet={served}]" in argv[f"host_agent[{h}]"] for h in ("robot", "edge"))
    assert "adapter:=fleet" in argv["reporter"]
    assert not any("adapter" in a for a in (" ".join(s.argv) for s in demo_processes(config(), LIB)))
    training = {spec.name: (spec.host, " ".join(spec.argv)) for spec in
                training_processes(config(), LIB, served, pathlib.Path("/out/training"))}
    assert set(training) == {"edge_trainer", "robot_trainer[robot_0]", "robot_trainer[robot_1]"}
    host, edge = training["edge_trainer"]
    assert host == "edge" and f"adapter_path:={served}" in edge and "min_robots:=2" in edge
    host, robot = training["robot_trainer[robot_1]"]
    assert host == "robot" and "robots:=2" in robot and "robot_index:=1" in robot and "__node:=robot_1" in robot
    assert all("__ns:=/fleet_training" in argv for _, argv in training.values())


def test_the_adapter_comparison_asks_held_out_questions_as_trained_with_and_without_the_adapter():
    manual = [QAPair(f"manual {i}?", "m", "manual") for i in range(3)]
    odometry = [QAPair(f"odometry {i}?", "o", "odometry", start_s=float(i)) for i in range(3)]
    domain = DomainSet(train=(), heldout=(*odometry, *manual), duration_s=10.0)
    questions = comparison_questions(domain)
    assert [q.question for q in questions] == ["manual 0?", "odometry 0?", "manual 1?", "odometry 1?"]
    pairs = comparison_requests(questions)
    assert [(b.options.adapter, a.options.adapter) for b, a in pairs] == [("", "fleet")] * 4
    base, adapted = pairs[0]
    assert base.prompt == adapted.prompt == "Question: manual 0?\nAnswer:"  # the fine-tuning's own prompt
    assert not base.options.apply_chat_template and base.options.stop == ("\n",)
    assert len({r.request_id for pair in pairs for r in pair}) == 8


def test_each_process_belongs_to_its_host_robot_processes_to_the_robot_fleet_services_to_the_gateway_host():
    hosts = (HostSpec.parse("robot:robot:0.5:320"), HostSpec.parse("edge:edge:1:480"), HostSpec.parse("c:cloud:2:900"))
    specs = demo_processes(config(hosts=hosts), LIB) + replay_processes(config(hosts=hosts), LIB)
    host_of = {spec.name: spec.host for spec in specs}
    assert host_of["host_agent[robot]"] == "robot" and host_of["host_agent[c]"] == "c"
    assert host_of["coordinator"] == host_of["gateway"] == host_of["host_agent[edge]"] == "edge"
    assert {host_of[n] for n in host_of if "encoder" in n or n == "reporter" or n.startswith("replay")} == {"robot"}


def test_replays_remap_under_the_robot_and_start_short_bags_at_their_beginning():
    replays = {spec.name: list(spec.argv) for spec in replay_processes(config(), LIB)}
    camera, odom = replays["replay[cam.mcap]"], replays["replay[run.mcap]"]
    assert camera[camera.index("--start-offset") + 1] == "0.0" and odom[odom.index("--start-offset") + 1] == "25.0"
    assert "/odom:=/tb3/odom" in odom and "/camera/image_raw/compressed:=/tb3/camera/image_raw/compressed" in camera
    # each replay is a node of its own name (the launch demo names them alike), never two /bag_replay
    assert camera[camera.index("--ros-args"):] == ["--ros-args", "-r", "__node:=image_replay"]
    assert odom[odom.index("--ros-args"):] == ["--ros-args", "-r", "__node:=odometry_replay"]


def test_ros_args_sections_are_split_off_the_commands_own_arguments():
    assert split_ros_args(["replay", "b.mcap", "--loop", "--ros-args", "-r", "__node:=x", "--", "--rate", "2"]) == (
        ["replay", "b.mcap", "--loop", "--rate", "2"], ["--ros-args", "-r", "__node:=x"])
    assert split_ros_args(["replay", "b.mcap"]) == (["replay", "b.mcap"], [])


def test_report_stages_add_up_and_name_the_residuals():
    gateway = [Stage("module:blocks_0_8", "robot", 0.5), Stage("module:head", "edge", 0.2),
               Stage("transfer_and_queueing", "", 0.1), Stage("total", "", 0.8)]
    stages = report_timings({"image": 0.012, "odometry": 0.001}, gateway, latency_s=0.81)
    named = {s.stage: s.seconds for s in stages}
    assert named["encode"] == 0.012  # encoders run side by side: the slowest counts
    assert named["request_and_result"] == pytest.approx(0.01)
    assert named["total"] == pytest.approx(0.822) == pytest.approx(stages_sum_s(stages))


def record(t: float, stages: list[Stage], text: str = "a report", error: str = "") -> ReportRecord:
    return ReportRecord(t, f"report-{t}", text, error, 1.0, ("image/camera",), tuple(stages))


def test_the_summary_flags_stages_that_do_not_add_up_and_counts_unanswered_ticks():
    good = report_timings({"image": 0.01}, [Stage("module:head", "edge", 0.5), Stage("transfer_and_queueing", "", 0.4),
                                            Stage("total", "", 0.9)], 1.0)
    # A shard that claims more time than the gateway measured around it: the residual can't absorb it.
    bad = report_timings({"image": 0.01}, [Stage("module:head", "edge", 1.5), Stage("transfer_and_queueing", "", 0.0),
                                           Stage("total", "", 0.9)], 1.0)
    records = DemoRecords(requests={"report-1.0": 1.0, "report-2.0": 2.0, "report-3.0": 3.0})
    records.reports = [record(1.0, good), record(2.0, bad)]
    summary = summarise(records, model="m", robot_id="tb3", duration_s=10, period_s=1, bags_started_s=0.5)
    assert summary["ticks"] == 3 and summary["reports_ok"] == 2 and summary["unanswered"] == ["report-3.0"]
    assert not summary["consistency"]["stages_add_up"] and summary["consistency"]["max_gap_s"] > 0.5
    records.reports = [record(1.0, good)] * 2 + [record(3.0, good, text="", error="(3) no chain")]
    summary = summarise(records, model="m", robot_id="tb3", duration_s=10, period_s=1, bags_started_s=0.5)
    assert summary["consistency"]["stages_add_up"] and summary["reports_failed"] == 1
    assert summary["stages_s"]["module:head@edge"]["median"] == 0.5


def test_network_env_names_the_profile_and_the_discovery_of_each_mode():
    profile = pathlib.Path("/share/config/fastdds_interhost.xml")
    assert network_env(profile, "subnet", ["10.0.0.2", "10.0.0.3"]) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    assert network_env(profile, "static", ["10.0.0.2", "10.0.0.3"])["ROS_STATIC_PEERS"] == "10.0.0.2;10.0.0.3"
    assert network_env(profile, "server", [], server="10.0.0.3")["ROS_DISCOVERY_SERVER"] == "10.0.0.3:11811"
    with pytest.raises(ValueError, match="subnet, static, server"):
        network_env(profile, "flood", [])
