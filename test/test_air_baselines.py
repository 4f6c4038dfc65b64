"""The classical channel predictors: the AR predictor finds a known linear process and beats no prediction on real
channels, the GRU's loss falls as it trains, and both come back from their files predicting the same."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from edge_lam.air.baselines import (
    ArPredictor,
    ArSettings,
    GruSettings,
    fit_ar,
    fit_ar_coefficients,
    load_ar,
    train_gru,
)
from edge_lam.air.channels import Windows, estimate, load_split, windows
from edge_lam.air.predictors import LastCsi, load_predictor, nmse_db
from edge_lam.assets.cache import air_channels_folder, is_complete


def sinusoid_windows(count: int, past: int = 16, future: int = 4, streams: tuple[int, int] = (4, 4),
                     seed: int = 0) -> Windows:
    """Windows whose every stream is one complex exponential (a single Doppler per window, random phases)."""
    rng = np.random.default_rng(seed)
    doppler = rng.uniform(-0.4, 0.4, size=(count, 1, 1, 1))  # cycles per slot
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1, *streams))
    amplitude = rng.rayleigh(1.0, size=(count, 1, *streams))
    t = np.arange(past + future).reshape(1, -1, 1, 1)
    h = (amplitude * np.exp(1j * (2 * np.pi * doppler * t + phase))).astype(np.complex64)
    return Windows(h[:, :past], h[:, past:], np.arange(count), np.zeros(count, np.float32))


def test_ar_recovers_the_coefficients_of_a_known_ar_process() -> None:
    rng = np.random.default_rng(1)
    a1, a2 = 1.2 * np.exp(0.3j), -0.5
    n, length = 256, 21
    x = np.zeros((n, length, 8, 8), np.complex64)
    innovation = (rng.normal(size=x.shape) + 1j * rng.normal(size=x.shape)).astype(np.complex64)
    x[:, :2] = innovation[:, :2]
    for t in range(2, length):
        x[:, t] = a1 * x[:, t - 1] + a2 * x[:, t - 2] + innovation[:, t]
    settings = ArSettings(order=2, direct=False, mode="global", ridge=0.0, past=20, future=1)
    coefficients = fit_ar_coefficients(x[:, :20], x[:, 20:], settings)
    np.testing.assert_allclose(coefficients[0], [a1, a2], atol=0.03)


def test_adaptive_ar_predicts_a_complex_sinusoid_almost_exactly() -> None:
    cut = sinusoid_windows(16)
    for direct in (False, True):
        settings = ArSettings(order=2, direct=direct, mode="adaptive", ridge=1e-6)
        predictor = ArPredictor(settings, np.zeros((4 if direct else 1, 2), np.complex64))
        assert nmse_db(predictor.predict(cut.past), cut.future) < -40.0
    assert nmse_db(LastCsi().predict(cut.past), cut.future) > -5.0


def test_ar_settings_and_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="order"):
        ArSettings(order=16)
    with pytest.raises(ValueError, match="mode"):
        ArSettings(mode="prony")
    with pytest.raises(ValueError, match="coefficients"):
        ArPredictor(ArSettings(order=4, direct=True), np.zeros((1, 4), np.complex64))
    with pytest.raises(ValueError, match="nothing to fit"):
        ArSettings(order=14, direct=True, mode="adaptive")
    predictor = ArPredictor(ArSettings(order=8, direct=True), np.zeros((4, 8), np.complex64))
    with pytest.raises(ValueError, match="16 past slots"):
        predictor.predict(np.zeros((1, 10, 2, 2), np.complex64))


@pytest.mark.skipif(not is_complete(air_channels_folder()),
                    reason="the air-interface channel set is not prepared (make setup prepares it)")
def test_ar_beats_no_prediction_on_the_prepared_channels() -> None:
    from edge_lam.assets.cache import air_channels_dir

    folder = air_channels_dir()
    train = windows(load_split(folder, "train").subset(16))
    val = windows(load_split(folder, "val").subset(16))
    log: list[dict] = []
    predictor = fit_ar(train, val, orders=(4,), ridges=(1e-3,), log=log)
    assert len(log) == 4  # direct and recursive, each global and adaptive
    assert predictor.settings.order == 4
    noisy = estimate(val.past, 20.0, seed=7)
    assert nmse_db(predictor.predict(noisy), val.future) < nmse_db(LastCsi().predict(noisy), val.future) - 2.0


def test_gru_loss_falls_and_it_keeps_its_best_state() -> None:
    torch.set_num_threads(1)
    train, val = sinusoid_windows(64, seed=2), sinusoid_windows(16, seed=3)
    settings = GruSettings(hidden=32, steps=60, batch=16, lr=1e-2, eval_every=20, augment=False, antennas=4,
                           subcarriers=4)
    predictor, report = train_gru(train, val, settings)
    losses = report["losses"]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert report["parameters"] == sum(p.numel() for p in predictor.net.parameters())
    assert report["best_step"] in (20, 40, 60)
    scored = predictor.predict(estimate(val.past, 20.0, seed=settings.seed + 1))  # val as train_gru read it
    assert scored.shape == (16, 4, 4, 4)
    assert nmse_db(scored, val.future) == pytest.approx(report["val_nmse_db"], abs=1e-4)
    with pytest.raises(ValueError, match="windows"):
        predictor.predict(np.zeros((1, 16, 8, 8), np.complex64))


def test_saved_predictors_load_back_predicting_the_same(tmp_path: pathlib.Path) -> None:
    torch.set_num_threads(1)
    train, val = sinusoid_windows(32, seed=5), sinusoid_windows(8, seed=6)
    noisy = estimate(val.past, 20.0, seed=8)
    ar = fit_ar(train, val, orders=(3,), ridges=(1e-3,))
    gru, _ = train_gru(train, val, GruSettings(hidden=16, steps=5, batch=8, eval_every=5, antennas=4,
                                               subcarriers=4))
    for predictor, kind in ((ar, "ar"), (gru, "gru")):
        path = tmp_path / f"{kind}.safetensors"
        predictor.save(path)
        loaded = load_predictor(kind, path)
        assert loaded.name == kind and (loaded.past, loaded.future) == (16, 4)
        np.testing.assert_array_equal(loaded.predict(noisy), predictor.predict(noisy))
        assert load_predictor("auto", path).name == kind
    assert load_ar(tmp_path / "ar.safetensors").settings == ar.settings
    with pytest.raises(ValueError, match="not 'ar'"):
        load_ar(tmp_path / "gru.safetensors")
