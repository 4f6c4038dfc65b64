"""Emulated hosts: the pure parts (link specs, composition, shaping on a fake clock, names and addresses), then real
namespaces (as root): UDP across hosts, counters, latency, loss, cuts, cleanup after a crash, and two ROS 2
processes on two hosts talking over UDP only."""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, TEST_DIR, finish
from edge_lam.hosts import (
    NEEDS_ROOT,
    EmulatedHosts,
    HostLink,
    HostSet,
    LinkShape,
    LinkSpecError,
    TopologyError,
    compose,
    down_prefix,
    format_link_spec,
    has_rights,
    parse_link_spec,
)
from edge_lam.hosts import command as hosts_command
from edge_lam.hosts.links import links_from_json, links_to_json
from edge_lam.hosts.netns import namespaces_with_prefix
from edge_lam.hosts.shaping import BACKLOG_S, DirectionShaper
from edge_lam.hosts.topology import check_prefix

# Prefixes of this test run's own (the domain id is the run's), so runs of other helpers or CI never collide.
DOMAIN = os.environ["ROS_DOMAIN_ID"]
PREFIX, CRASH_PREFIX = f"el{DOMAIN}t", f"el{DOMAIN}k"
PORT = 7400 + 100  # clear of the DDS ports of domain 0
TIMEOUT_S = 60
SPDP_GROUP = "239.255.0.1"  # the multicast group of DDS discovery


def netns_test(test):
    """Real namespaces: needs root, starts processes."""
    return pytest.mark.processes(pytest.mark.skipif(not has_rights(), reason=NEEDS_ROOT)(test))


# -- link specs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "shape"), [
    ("latency=50ms,jitter=5ms,rate=20mbit,loss=5%", LinkShape(50.0, 5.0, 20e6, 0.05)),
    ("", LinkShape()),
    ("latency=0.2s", LinkShape(latency_ms=200.0)),
    ("latency=500us, loss=0.3", LinkShape(latency_ms=0.5, loss=0.3)),
    ("LATENCY=10,rate=512kbit", LinkShape(latency_ms=10.0, rate_bps=512e3)),
    ("rate=unlimited,loss=100%", LinkShape(loss=1.0)),
    ("rate=1gbit", LinkShape(rate_bps=1e9)),
])
def test_link_specs_parse(spec, shape):
    assert parse_link_spec(spec) == shape


@pytest.mark.parametrize(("spec", "says"), [
    ("latency=fast", "latency must be a duration"),
    ("latency=-5ms", "latency must be a duration"),
    ("rate=20mbps", "rate must be bits per second"),
    ("loss=150%", "at most 100%"),
    ("loss=2", "at most 100%"),
    ("delay=5ms", "unknown key 'delay'"),
    ("latency=5ms,latency=6ms", "latency given twice"),
    ("latency", "is not KEY=VALUE"),
    ("loss=", "is not KEY=VALUE"),
])
def test_bad_link_specs_say_what_is_wrong(spec, says):
    with pytest.raises(LinkSpecError, match=says):
        parse_link_spec(spec)


def test_a_formatted_spec_parses_back():
    for shape in (LinkShape(50.0, 5.0, 20e6, 0.05), LinkShape(latency_ms=0.5), LinkShape()):
        text = format_link_spec(shape)
        assert (parse_link_spec(text) if text != "perfect" else LinkShape()) == shape


def test_impossible_shapes_are_refused():
    for fields in ({"loss": 1.5}, {"latency_ms": -1.0}, {"rate_bps": float("nan")}, {"jitter_ms": float("inf")}):
        with pytest.raises(LinkSpecError):
            LinkShape(**fields)


def test_links_in_series_add_delays_keep_the_slower_rate_and_compound_loss():
    up = LinkShape(latency_ms=30.0, jitter_ms=2.0, rate_bps=10e6, loss=0.1)
    down = LinkShape(latency_ms=20.0, jitter_ms=1.0, rate_bps=0.0, loss=0.2)
    both = compose(up, down)
    assert both.latency_ms == 50.0 and both.jitter_ms == 3.0 and both.rate_bps == 10e6
    assert both.loss == pytest.approx(1 - 0.9 * 0.8)
    assert compose(LinkShape(), LinkShape()) == LinkShape()
    assert compose(LinkShape(rate_bps=5e6), LinkShape(rate_bps=2e6)).rate_bps == 2e6


def test_links_files_round_trip_and_bad_ones_are_refused():
    links = {"robot": HostLink(up=LinkShape(latency_ms=5.0), cut=True), "edge": HostLink()}
    assert links_from_json(links_to_json(links)) == links
    for text in ("{", "[]", '{"robot": {"up": {}}}', '{"robot": {"up": {"loss": 3}, "down": {}, "cut": false}}'):
        with pytest.raises(LinkSpecError):
            links_from_json(text)


# -- shaping on a fake clock ------------------------------------------------------------------------------------

def shaper(**fields) -> DirectionShaper:
    return DirectionShaper(LinkShape(**fields), random.Random(0))


def test_latency_delays_every_frame_by_the_same_amount():
    line = shaper(latency_ms=50.0)
    assert line.admit(10.0, 1500) == pytest.approx(10.05)
    assert line.admit(10.001, 100) == pytest.approx(10.051)


def test_the_rate_serialises_frames_one_after_another():
    line = shaper(rate_bps=8e6, latency_ms=10.0)  # 1 MB/s: a 1000-byte frame holds the wire 1 ms
    first = line.admit(0.0, 1000)
    second = line.admit(0.0, 1000)  # arrives together: waits for the first to be on the wire
    third = line.admit(0.5, 1000)  # arrives when the wire is idle again
    assert first == pytest.approx(0.011) and second == pytest.approx(0.012) and third == pytest.approx(0.511)


def test_a_full_rate_limited_queue_drops_frames():
    line = shaper(rate_bps=8e4)  # 10 kB/s: each 1000-byte frame holds the wire 0.1 s
    admitted = [line.admit(0.0, 1000) for _ in range(10)]
    kept = [a for a in admitted if a is not None]
    assert admitted[:len(kept)] == kept and kept[0] == pytest.approx(0.1)
    assert len(kept) in (round(BACKLOG_S / 0.1), round(BACKLOG_S / 0.1) + 1)  # those that waited <= BACKLOG_S
    assert line.admit(10.0, 1000) == pytest.approx(10.1)  # the queue drained meanwhile


def test_jitter_spreads_delays_but_never_reorders():
    sparse = shaper(latency_ms=20.0, jitter_ms=15.0)  # frames 50 ms apart: each draws its own delay
    delays = [sparse.admit(i * 0.05, 100) - i * 0.05 for i in range(1000)]
    assert 0.005 - 1e-9 <= min(delays) < 0.007 and 0.033 < max(delays) <= 0.035 + 1e-9
    dense = shaper(latency_ms=20.0, jitter_ms=15.0)  # 1 ms apart: a frame drawn short waits for the one ahead
    releases = [dense.admit(i * 0.001, 100) for i in range(2000)]
    assert releases == sorted(releases)
    assert all(0.005 - 1e-9 <= r - i * 0.001 <= 0.035 + 1e-9 for i, r in enumerate(releases))


def test_loss_drops_about_its_share_reproducibly():
    line = shaper(loss=0.3)
    drops = [line.admit(i * 1e-3, 100) is None for i in range(10000)]
    again = shaper(loss=0.3)
    assert drops == [again.admit(i * 1e-3, 100) is None for i in range(10000)]
    assert 0.28 < sum(drops) / len(drops) < 0.32


def test_a_reshaped_link_keeps_the_order_of_frames_already_admitted():
    line = shaper(latency_ms=100.0)
    slow = line.admit(0.0, 100)
    line.reshape(LinkShape())
    assert line.admit(0.001, 100) == slow  # no overtaking: it leaves right behind the slow one
    assert line.admit(0.2, 100) == pytest.approx(0.2)


# -- names and addresses ----------------------------------------------------------------------------------------

def test_a_set_names_namespaces_devices_and_addresses():
    topology = HostSet.build(["robot", "edge"], "el61", subnet="10.5.6.0/24", mtu=1400)
    assert topology.namespaces() == ["el61-robot", "el61-edge", "el61-lan"]
    assert (topology.address("robot"), topology.address("edge"), topology.bridge_address) == \
        ("10.5.6.2", "10.5.6.3", "10.5.6.1")
    commands = [" ".join(c) for c in topology.commands("python3")]
    assert "ip -n el61-robot route add default via 10.5.6.1 dev eth0" in commands
    assert "ip -n el61-edge addr add 10.5.6.3/24 dev eth0" in commands
    devices = {topology.lan_device(h) for h in topology.hosts} | {topology.tap_device(h) for h in topology.hosts}
    assert all(len(d) <= 15 for d in devices) and len(devices) == 4
    assert HostSet.from_json(topology.to_json()) == topology
    assert HostSet.build(["a"], "el61").subnet != HostSet.build(["a"], "el62").subnet
    with pytest.raises(KeyError, match="no host 'cloud'"):
        topology.address("cloud")


@pytest.mark.parametrize(("hosts", "prefix", "subnet", "mtu", "says"), [
    (["robot"], "El-1", None, 1500, "prefix"),
    (["robot"], "toolongprefix", None, 1500, "prefix"),
    (["Robot"], "el", None, 1500, "host name"),
    (["lan"], "el", None, 1500, "host name"),
    (["a", "a"], "el", None, 1500, "repeat"),
    ([], "el", None, 1500, "at least one host"),
    (["robot"], "el", "10.1.2.3/24", 1500, "subnet"),
    (["a", "b"], "el", "10.1.2.0/31", 1500, "too few addresses"),
    (["robot"], "el", None, 100, "MTU"),
])
def test_bad_sets_are_refused_with_the_reason(hosts, prefix, subnet, mtu, says):
    with pytest.raises(TopologyError, match=says):
        HostSet.build(hosts, prefix, subnet, mtu)


def test_a_prefix_that_is_not_a_plain_name_is_refused_before_anything_is_touched():
    for prefix in ("../..", "el/x", "el-1", ""):
        with pytest.raises(TopologyError, match="prefix"):
            check_prefix(prefix)


def test_without_rights_the_command_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr("edge_lam.hosts.netns.has_rights", lambda: False)
    for action in ("up", "down"):
        args = argparse.Namespace(action=action, hosts=["robot"], prefix="elnr", subnet=None, mtu=1500, seed=0)
        assert hosts_command.run_hosts_command(args) == 2
        assert capsys.readouterr().err.strip() == NEEDS_ROOT


@netns_test
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_a_user_without_rights_is_told_so_in_one_line():
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    for action in (["up", "robot"], ["down"]):
        result = subprocess.run([*nobody, sys.executable, "-m", "edge_lam.cli", "hosts", *action, "--prefix",
                                 "elnobody"], capture_output=True, text=True, timeout=TIMEOUT_S)
        assert (result.returncode, result.stderr.strip()) == (2, NEEDS_ROOT)
    assert namespaces_with_prefix("elnobody") == []


# -- real namespaces --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hosts():
    """One set for the module; taken apart at the end even when a test failed, and checked gone."""
    if not has_rights():
        pytest.skip(NEEDS_ROOT)
    down_prefix(PREFIX)  # what a killed earlier run of this domain may have left
    emulated = EmulatedHosts(["robot", "edge"], prefix=PREFIX, seed=1)
    try:
        emulated.up()
        yield emulated
    finally:
        emulated.down()
        for prefix in (PREFIX, CRASH_PREFIX):
            down_prefix(prefix)
        assert not namespaces_with_prefix(PREFIX) and not namespaces_with_prefix(CRASH_PREFIX)


@pytest.fixture
def perfect_links(hosts):
    """Every test starts and ends with perfect, uncut links."""
    for host in hosts.hosts:
        hosts.restore(host)
        hosts.set_link(host, up=LinkShape(), down=LinkShape())
    yield hosts
    for host in hosts.hosts:
        hosts.restore(host)
        hosts.set_link(host, up=LinkShape(), down=LinkShape())


@pytest.fixture
def echo(perfect_links, processes):
    """A UDP echo on the edge host; ``ping(count, size, gap_s)`` runs the other end on the robot."""
    hosts = perfect_links
    server = processes.start(*hosts.command("edge", [sys.executable, str(TEST_DIR / "udp_peer.py"), "echo",
                                                     str(PORT), SPDP_GROUP]))
    assert first_line(server, TIMEOUT_S) == "ready"

    def ping(count: int, size: int = 200, gap_s: float = 0.0, to: str | None = None) -> dict:
        client = processes.start(*hosts.command("robot", [
            sys.executable, str(TEST_DIR / "udp_peer.py"), "ping", to or hosts.address("edge"), str(PORT),
            str(count), str(size), str(gap_s)]))
        rc, output = finish(client, TIMEOUT_S)
        assert rc == 0, output
        return json.loads(output.strip().splitlines()[-1])

    ping(3)  # ARP resolved before any test shapes the link
    return ping


def first_line(process: subprocess.Popen, timeout_s: float) -> str:
    """The first line a process prints, or "" if it prints none within the time-out."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        return process.stdout.readline().strip() if selector.select(timeout_s) else ""


@netns_test
def test_hosts_have_their_namespaces_and_addresses(hosts):
    assert set(namespaces_with_prefix(PREFIX)) == {f"{PREFIX}-robot", f"{PREFIX}-edge", f"{PREFIX}-lan"}
    shown = subprocess.run(hosts.command("robot", ["ip", "-j", "addr", "show", "dev", "eth0"]),
                           capture_output=True, text=True, timeout=TIMEOUT_S, check=True).stdout
    assert hosts.address("robot") in shown and hosts.forwarder_pid() is not None


@netns_test
def test_udp_crosses_between_hosts_and_the_veth_counts_it(perfect_links, echo):
    hosts = perfect_links
    robot, edge = hosts.counters("robot"), hosts.counters("edge")
    result = echo(50, size=1000)
    assert result["received"] == list(range(50))
    after_robot, after_edge = hosts.counters("robot"), hosts.counters("edge")
    assert after_robot.tx_bytes - robot.tx_bytes >= 50 * 1000 and after_robot.rx_bytes - robot.rx_bytes >= 50 * 1000
    assert after_edge.rx_bytes - edge.rx_bytes >= 50 * 1000 and after_edge.tx_bytes - edge.tx_bytes >= 50 * 1000


@netns_test
def test_large_datagrams_cross_in_ip_fragments(perfect_links, echo):
    result = echo(5, size=60000, gap_s=0.05)  # one at a time: a burst could overflow a socket's receive buffer
    assert result["received"] == list(range(5))


@netns_test
def test_multicast_to_the_dds_discovery_group_reaches_the_other_host(perfect_links, echo):
    assert echo(5, gap_s=0.01, to=SPDP_GROUP)["received"] == list(range(5))


@netns_test
def test_a_rate_limit_makes_frames_wait_for_the_wire(perfect_links, echo):
    perfect_links.set_link("robot", up=LinkShape(rate_bps=2e6))
    result = echo(50, size=1000)  # sent at once: the last waits behind 49 frames of 1042 bytes at 2 Mbit/s
    assert result["received"] == list(range(50))
    assert max(result["rtt_ms"]) >= 49 * 1042 * 8 / 2e6 * 1e3


@netns_test
def test_50ms_each_way_makes_round_trips_of_at_least_100ms(perfect_links, echo):
    perfect_links.set_link("robot", up=LinkShape(latency_ms=50.0), down=LinkShape(latency_ms=50.0))
    result = echo(5, gap_s=0.2)
    assert result["received"] == list(range(5))
    assert min(result["rtt_ms"]) >= 100.0


@netns_test
def test_jitter_spreads_round_trips_around_the_latency(perfect_links, echo):
    perfect_links.set_link("robot", up=LinkShape(latency_ms=30.0, jitter_ms=20.0))
    rtts = echo(20, gap_s=0.06)["rtt_ms"]  # further apart than the jitter: each datagram draws its own delay
    assert len(rtts) == 20 and min(rtts) >= 10.0
    assert max(rtts) - min(rtts) > 5.0


@netns_test
def test_30_percent_loss_drops_about_that_share(perfect_links, echo):
    perfect_links.set_link("robot", up=LinkShape(loss=0.3))
    result = echo(500, gap_s=0.001)
    lost = 1 - len(result["received"]) / result["sent"]
    assert 0.2 < lost < 0.4, f"lost {lost:.2%}"


@netns_test
def test_a_cut_drops_everything_and_restore_brings_it_back(perfect_links, echo):
    perfect_links.cut("robot")
    assert echo(20, gap_s=0.005)["received"] == []
    perfect_links.restore("robot")
    assert echo(20, gap_s=0.005)["received"] == list(range(20))


def edge_lam_hosts(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_lam.cli", "hosts", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@netns_test
def test_the_command_shows_and_changes_a_running_set(perfect_links):
    hosts = perfect_links
    status = edge_lam_hosts("status", "--prefix", PREFIX)
    assert status.returncode == 0 and hosts.address("robot") in status.stdout and "forwarder pid" in status.stdout
    changed = edge_lam_hosts("link", "robot", "--up", "latency=20ms,loss=1%", "--prefix", PREFIX)
    assert changed.returncode == 0, changed.stderr
    assert hosts.links()["robot"].up == LinkShape(latency_ms=20.0, loss=0.01)
    assert edge_lam_hosts("link", "robot", "--cut", "--prefix", PREFIX).returncode == 0
    assert hosts.links()["robot"].cut and "CUT" in edge_lam_hosts("status", "--prefix", PREFIX).stdout
    bad = edge_lam_hosts("link", "robot", "--down", "latency=soon", "--prefix", PREFIX)
    assert bad.returncode == 2 and "latency must be a duration" in bad.stderr
    unknown = edge_lam_hosts("link", "cloud", "--cut", "--prefix", PREFIX)
    assert unknown.returncode == 2 and "no host 'cloud'" in unknown.stderr
    taken = edge_lam_hosts("up", "robot", "--prefix", PREFIX)
    assert taken.returncode == 1 and "is in use" in taken.stderr


@netns_test
def test_down_after_the_forwarder_was_killed_removes_everything():
    down_prefix(CRASH_PREFIX)
    crashed = EmulatedHosts(["a", "b"], prefix=CRASH_PREFIX)
    try:
        crashed.up()
        pid = crashed.forwarder_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        result = subprocess.run([sys.executable, "-m", "edge_lam.cli", "hosts", "down", "--prefix", CRASH_PREFIX],
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        assert result.returncode == 0, result.stderr
        assert namespaces_with_prefix(CRASH_PREFIX) == []
        assert not crashed.run_dir.exists()
    finally:
        crashed.down()


UDP_ONLY_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor><transport_id>udp_only</transport_id><type>UDPv4</type></transport_descriptor>
    </transport_descriptors>
    <participant profile_name="udp_only" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>udp_only</transport_id></userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


@netns_test
@pytest.mark.parametrize("profile", ["udp_only", "edge_lam"])
def test_two_ros_processes_on_two_hosts_talk_through_the_veths(perfect_links, processes, tmp_path, profile):
    """Discovery (SPDP multicast) and data cross the emulated network: every payload byte is counted on the veths.
    Also with edge_lam's own profile (shared memory and UDP): Fast DDS does not take the namespaces for one host."""
    hosts = perfect_links
    path = tmp_path / "udp_only.xml"
    path.write_text(UDP_ONLY_PROFILE)
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(path if profile == "udp_only" else REPO / "config" / "fastdds.xml")}
    count, size = 20, 100_000
    peer = [sys.executable, str(TEST_DIR / "bulk_peer.py")]
    before = hosts.counters("robot"), hosts.counters("edge")
    receiver = processes.start(*hosts.command("edge", [*peer, "receive", "/hosts_bulk", str(count)], env))
    assert first_line(receiver, TIMEOUT_S) == "ready"
    sender = processes.start(*hosts.command("robot", [*peer, "publish", "/hosts_bulk", str(count), str(size)], env))
    received, sent = finish(receiver, TIMEOUT_S)[1], finish(sender, TIMEOUT_S)[1]
    assert "verdict: ok" in received, received
    assert "verdict: ok" in sent, sent
    robot, edge = hosts.counters("robot"), hosts.counters("edge")
    assert robot.tx_bytes - before[0].tx_bytes >= count * size and edge.rx_bytes - before[1].rx_bytes >= count * size
    assert edge.tx_packets - before[1].tx_packets > 0 and robot.rx_packets - before[0].rx_packets > 0  # acks
