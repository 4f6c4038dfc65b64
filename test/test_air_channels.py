"""The air-interface example's data and beams: channel draws are seeded and shaped as documented, windows and
estimates are what they say, the codebook's best beam is the one the channel points at, and NMSE scores right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_lam.air.beams import best_beams, dft_codebook, spectral_efficiency, top_k_hit
from edge_lam.air.channels import ChannelSettings, estimate, generate_split, windows
from edge_lam.air.predictors import LastCsi, nmse_db

TINY = ChannelSettings(antennas=8, subcarriers=8, steps=10, batch=2, draws={"train": 4, "val": 2, "test": 2,
                                                                              "zero_shot": 3})


@pytest.fixture(scope="module")
def draws() -> dict:
    """Tiny splits, drawn once for the module (sionna's import alone takes seconds)."""
    other = dataclasses.replace(TINY, seed=TINY.seed + 1)
    return {"train": generate_split(TINY, "train"), "again": generate_split(TINY, "train"),
            "other_seed": generate_split(other, "train"),
            "zero_shot": generate_split(TINY, "zero_shot", draws=2)}


def test_a_split_is_the_same_for_the_same_seed_and_differs_for_another(draws: dict) -> None:
    first, again = draws["train"], draws["again"]
    np.testing.assert_array_equal(first.h, again.h)
    np.testing.assert_array_equal(first.speed_kmh, again.speed_kmh)
    np.testing.assert_array_equal(first.delay_spread_ns, again.delay_spread_ns)
    assert not np.allclose(first.h, draws["other_seed"].h)
    assert not np.allclose(first.speed_kmh, draws["other_seed"].speed_kmh)


def test_a_split_is_shaped_and_ranged_as_documented(draws: dict) -> None:
    train, zero_shot = draws["train"], draws["zero_shot"]
    assert train.h.shape == (4, 10, 8, 8) and train.h.dtype == np.complex64
    assert zero_shot.h.shape == (2, 10, 8, 8)  # draws= overrides the settings' count
    assert (train.profile, zero_shot.profile) == ("C", "A")
    assert train.speed_kmh.shape == (4,) and np.all((train.speed_kmh >= 10) & (train.speed_kmh <= 120))
    assert np.all((train.delay_spread_ns >= 30) & (train.delay_spread_ns <= 300))
    assert train.delay_spread_ns[0] == train.delay_spread_ns[1] != train.delay_spread_ns[2]  # one per batch of 2
    assert 0.5 < float(np.mean(np.abs(train.h) ** 2)) < 2.0  # normalised to unit mean power
    assert np.all(np.isfinite(train.h))
    assert len(train.subset(3)) == 3


def test_windows_cut_past_and_future_from_each_draw(draws: dict) -> None:
    train = draws["train"]
    cut = windows(train, past=4, future=2, stride=2)  # starts 0, 2, 4 of 10 steps
    assert cut.past.shape == (12, 4, 8, 8) and cut.future.shape == (12, 2, 8, 8)
    np.testing.assert_array_equal(cut.draw, np.repeat(np.arange(4), 3))
    np.testing.assert_array_equal(cut.past[4], train.h[1, 2:6])
    np.testing.assert_array_equal(cut.future[5], train.h[1, 8:10])
    np.testing.assert_array_equal(cut.speed_kmh, train.speed_kmh[cut.draw])
    for past, future in ((8, 3), (0, 2), (4, 0)):
        with pytest.raises(ValueError):
            windows(train, past=past, future=future)


def test_estimates_have_the_noise_asked_for() -> None:
    rng = np.random.default_rng(0)
    h = (rng.normal(size=(64, 16, 16, 32)) + 1j * rng.normal(size=(64, 16, 16, 32))).astype(np.complex64)
    noisy = estimate(h, snr_db=20.0, seed=3)
    measured = 10 * np.log10(np.mean(np.abs(h) ** 2) / np.mean(np.abs(noisy - h) ** 2))
    assert measured == pytest.approx(20.0, abs=0.1)
    assert noisy.dtype == np.complex64
    np.testing.assert_array_equal(noisy, estimate(h, snr_db=20.0, seed=3))
    assert not np.allclose(noisy, estimate(h, snr_db=20.0, seed=4))
    np.testing.assert_array_equal(estimate(h, snr_db=float("inf"), seed=3), h)


def test_a_channel_along_one_beam_picks_that_beam() -> None:
    codebook = dft_codebook(16, oversample=2)
    assert codebook.shape == (32, 16)
    np.testing.assert_allclose(np.linalg.norm(codebook, axis=1), 1.0, rtol=1e-5)
    gains = np.exp(1j * np.linspace(0, 3, 8))  # the same direction on every subcarrier, any phase
    for beam in (0, 7, 21):
        window = np.broadcast_to(codebook[beam][None, :, None] * gains, (4, 16, 8))  # [time, antenna, subcarrier]
        ranked = best_beams(window[None], codebook, k=3)
        assert ranked[0, 0] == beam
        assert ranked.shape == (1, 3)


def test_top_k_hit_says_whether_the_true_beam_is_ranked() -> None:
    ranked = np.array([[3, 1, 2], [5, 6, 7], [0, 9, 8]])
    np.testing.assert_array_equal(top_k_hit(ranked, np.array([2, 4, 0])), [True, False, True])
    np.testing.assert_array_equal(top_k_hit(ranked[:, :1], np.array([3, 5, 9])), [True, True, False])


def test_the_best_beam_has_the_highest_spectral_efficiency(draws: dict) -> None:
    cut = windows(draws["train"], past=4, future=2, stride=2)
    codebook = dft_codebook(8)
    best = best_beams(cut.future, codebook, k=1)[:, 0]
    best_se = spectral_efficiency(cut.future, best, codebook, snr_db=10.0)
    assert np.all(best_se > 0)
    for beam in range(len(codebook)):
        other = spectral_efficiency(cut.future, np.full(len(cut), beam), codebook, snr_db=10.0)
        assert np.all(best_se >= other - 1e-6)


def test_nmse_db_scores_errors_against_the_true_channel() -> None:
    rng = np.random.default_rng(1)
    true = (rng.normal(size=(8, 4, 4, 4)) + 1j * rng.normal(size=(8, 4, 4, 4))).astype(np.complex64)
    assert nmse_db(1.1 * true, true) == pytest.approx(-20.0, abs=1e-3)
    assert nmse_db(np.zeros_like(true), true) == pytest.approx(0.0, abs=1e-6)
    assert nmse_db(true + 1e-3 * true, true) < nmse_db(true + 1e-2 * true, true)
    repeated = LastCsi(past=4, future=2).predict(true)
    assert repeated.shape == (8, 2, 4, 4)
    np.testing.assert_array_equal(repeated[:, 1], true[:, -1])
