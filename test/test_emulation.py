"""The emulated slower host and link a shard can be given for benchmarks: delays as documented, in order, one step
at a time on the slow host, bad values refused."""

import pytest

from edge_lam.descriptors import Link
from edge_lam.link.emulation import DelayLine, compute_delay_s, link_parameter


def test_a_link_charges_its_latency_plus_bytes_over_bandwidth():
    link = link_parameter([0.020, 100e6])
    assert link.transfer_s(0) == 0.020
    assert link.transfer_s(1_250_000) == pytest.approx(0.020 + 0.1)  # 10 Mbit over 100 Mbit/s
    assert link_parameter([]) is None


@pytest.mark.parametrize("values", [[0.02], [0.02, 1e8, 3.0], [-0.01, 1e8], [0.02, 0.0], [float("inf"), 1e8]])
def test_a_malformed_link_is_refused(values):
    with pytest.raises(ValueError, match="emulated link"):
        link_parameter(values)


def test_a_slowdown_adds_the_missing_compute_and_never_speeds_up():
    assert compute_delay_s(0.05, 4.0) == pytest.approx(0.15)
    assert compute_delay_s(0.05, 1.0) == 0.0
    assert compute_delay_s(0.05, 0.5) == 0.0


def test_without_emulation_the_delay_line_delays_nothing():
    line = DelayLine()
    assert not line.delays
    delivered = line.arrive(5.0, 10_000)
    start = line.start(delivered)
    assert delivered == start == 5.0
    assert line.finish(start, 0.05, 10_000) == pytest.approx(5.05)


def test_a_packet_crosses_each_link_in_latency_plus_bytes_over_bandwidth():
    line = DelayLine(1.0, link_parameter([0.020, 100e6]), Link("", "", 0.5, 8e6))
    assert line.delays
    delivered = line.arrive(10.0, 1_250_000)  # 10 Mbit over 100 Mbit/s
    assert delivered == pytest.approx(10.0 + 0.020 + 0.1)
    start = line.start(delivered)
    assert start == delivered
    assert line.finish(start, 0.01, 1_000_000) == pytest.approx(start + 0.01 + 0.5 + 1.0)


def test_packets_keep_their_order_and_share_the_links_bandwidth():
    line = DelayLine(input_link=link_parameter([0.020, 8e6]))  # 1 MB/s
    big = line.arrive(0.0, 1_000_000)  # one second on the wire
    small = line.arrive(0.1, 1)  # would be across at 0.12 alone: it waits behind the big one's bytes
    assert big == pytest.approx(1.02)
    assert small == pytest.approx(1.0 + 0.020 + 1e-6)
    assert small > big
    assert line.arrive(5.0, 1) == pytest.approx(5.020001)  # the wire has been free for a while


def test_a_slow_host_computes_one_step_at_a_time():
    line = DelayLine(4.0)
    first, second = line.arrive(0.0, 100), line.arrive(0.0, 100)
    start = line.start(first)
    assert start == 0.0
    assert line.finish(start, 0.05, 100) == pytest.approx(0.2)  # 4x the 50 ms it took here
    assert line.start(second) == pytest.approx(0.2)  # a 0.25x host cannot run two steps at once
    assert line.finish(line.start(second), 0.05, 100) == pytest.approx(0.4)
    assert line.start(line.arrive(1.0, 100)) == 1.0  # idle again


def test_a_host_cannot_be_made_faster():
    with pytest.raises(ValueError, match="compute_slowdown must be >= 1"):
        DelayLine(0.5)
