"""The emulated slower host and link a shard can be given for benchmarks: delays as documented, bad values refused."""

import pytest

from edge_lam.link.emulation import compute_delay_s, link_parameter


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
