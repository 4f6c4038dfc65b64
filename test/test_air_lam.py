"""The LAM channel predictor: it trains (a few steps on a tiny slice of the prepared CDL set), only its new weights
train, SmolLM2's own stay as prepared, a saved predictor predicts exactly as the trained one, bad windows are
refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edge_lam.air import channels
from edge_lam.air.predictors import LastCsi, load_predictor, nmse_db
from edge_lam.assets.cache import air_channels_folder, asset_dir, is_complete

pytestmark = pytest.mark.skipif(
    not (is_complete(air_channels_folder()) and is_complete(asset_dir("models", "smollm2-135m-instruct"))),
    reason="the air-interface channel set or SmolLM2 is not prepared (run `make setup`)")

SNR_DB = 20.0


@pytest.fixture(scope="module")
def tiny():
    from edge_lam.air.lam import LamSettings, train_lam
    from edge_lam.assets.cache import air_channels_dir
    from edge_lam.training.adapters import LoraSettings

    folder = air_channels_dir()
    train = channels.windows(channels.load_split(folder, "train").subset(3))  # 12 windows
    val = train  # scored on its own windows (other noise): the check is that training fits, not that it generalises
    settings = LamSettings(layers=1, lora=LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj",
                                                                                            "up_proj")),
                           base="last", head="filter", lr=5e-3, steps=8, batch=6, eval_every=4, seed=3)
    predictor, report = train_lam(train, val, settings)
    return settings, train, val, predictor, report


def test_training_lowers_the_error_on_its_windows(tiny):
    _, train, _, predictor, report = tiny
    past = channels.estimate(train.past, SNR_DB, seed=7)
    before = nmse_db(LastCsi().predict(past), train.future)  # the untrained LAM: its head starts at zero
    after = nmse_db(predictor.predict(past), train.future)
    assert after < before - 1.0, (before, after)
    assert [step for step, _, _ in report["history"]] == [0, 4, 8]
    assert report["history"][0][2] == pytest.approx(nmse_db(LastCsi().predict(channels.estimate(
        train.past, SNR_DB, 3 + 1)), train.future), abs=1e-3)  # step 0 scored the base
    assert report["val_nmse_db"] == min(score for _, _, score in report["history"]) < report["history"][0][2]
    assert report["train_s"] > 0


def test_window_ar_extrapolates_a_sum_of_dopplers():
    """Two paths with their own Doppler, seen without noise: an AR fit of order 2 predicts them exactly."""
    from edge_lam.air.lam import window_ar

    t = np.arange(20)[:, None, None]
    gains = np.exp(2j * np.pi * np.random.default_rng(0).random((2, 4, 6)))
    h = gains[0] * np.exp(2j * np.pi * 0.07 * t) + 0.5 * gains[1] * np.exp(-2j * np.pi * 0.13 * t)
    h = h[None].astype(np.complex64)  # [1, 20, 4, 6]
    predicted = window_ar(torch.from_numpy(h[:, :16]), 4, order=2, ridge=1e-6).numpy()
    assert nmse_db(predicted, h[:, 16:]) < -40.0
    assert nmse_db(LastCsi().predict(h[:, :16]), h[:, 16:]) > -10.0


def test_only_the_new_weights_train_and_smollm2_is_unchanged(tiny):
    settings, train, _, predictor, report = tiny
    model = predictor.model
    hidden, features = 576, 2 * train.past.shape[2] * train.past.shape[3]
    shapes = {"q_proj": (576, 576), "v_proj": (576, 192), "up_proj": (576, 1536)}
    lora = sum(settings.lora.rank * (i + o) for i, o in shapes.values())
    norms = 2 * hidden  # the layer's input and post-attention RMSNorms
    taps = 2 * settings.future * settings.past  # the head's complex taps over the past slots, per future slot
    new = (features + 1) * hidden + settings.past * hidden + 2 * hidden + (hidden + 1) * taps
    assert report["trainable_parameters"] == lora + norms + new
    assert report["total_parameters"] > report["trainable_parameters"]
    for name in model.trainable():
        assert "lora_" in name or name.endswith("norm.weight") or name.split(".")[0] in (
            "patch", "position", "norm", "head"), name
    frozen = {name: p for name, p in model.blocks.layers.named_parameters() if not p.requires_grad}
    assert len(frozen) == 7  # the layer's seven projections
    from edge_lam.assets.cache import smollm2_dir

    with safe_open(str(smollm2_dir() / "model.safetensors"), framework="pt") as checkpoint:
        for name, parameter in frozen.items():
            prepared = checkpoint.get_tensor("model.layers." + name.replace(".base_layer", ""))
            assert torch.equal(parameter, prepared), name


def test_save_and_load_predict_the_same(tiny, tmp_path):
    from edge_lam.air.lam import load_lam

    _, _, val, predictor, _ = tiny
    path = predictor.save(tmp_path / "lam.safetensors")
    with safe_open(str(path), framework="pt") as file:
        assert file.metadata()["kind"] == "lam"
        assert set(file.keys()) == set(predictor.model.trainable())  # SmolLM2's frozen weights are not in it
    past = channels.estimate(val.past, SNR_DB, seed=11)
    expected = predictor.predict(past)
    assert expected.shape == val.future.shape and expected.dtype == np.complex64
    for loaded in (load_lam(path), load_predictor("lam", path)):
        assert loaded.name == "lam"
        np.testing.assert_array_equal(loaded.predict(past), expected)
    np.testing.assert_allclose(predictor.predict(past[:1]), expected[:1], rtol=1e-4, atol=1e-5)  # batch 1


def test_bad_windows_are_refused(tiny):
    _, _, val, predictor, _ = tiny
    for bad in (val.past[:, 1:], val.past[:, :, :8], val.past[0]):
        with pytest.raises(ValueError, match="predicts from windows"):
            predictor.predict(bad)


def test_angle_delay_head_starts_from_the_denoised_ar_and_round_trips(tmp_path):
    """The default head, untrained, already beats the window's own AR (the noise is cut in the angle-delay
    domain), a few steps keep the best of what val saw, and its saved file predicts as the trained model."""
    from edge_lam.air.lam import LamSettings, load_lam, train_lam, window_ar
    from edge_lam.assets.cache import air_channels_dir
    from edge_lam.training.adapters import LoraSettings

    train = channels.windows(channels.load_split(air_channels_dir(), "train").subset(3))
    settings = LamSettings(layers=1, lora=LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj",)),
                           steps=2, batch=6, eval_every=1, seed=3)
    assert settings.head == LamSettings().head == "angle_delay"
    predictor, report = train_lam(train, train, settings)
    past = channels.estimate(train.past, SNR_DB, 3 + 1)  # the noise train_lam scored val with
    scale = np.sqrt(np.mean(np.abs(past) ** 2, axis=(1, 2, 3), keepdims=True))
    ar = window_ar(torch.from_numpy(past / scale), 4, settings.ar_order, settings.ar_ridge).numpy() * scale
    assert report["history"][0][2] < nmse_db(ar, train.future) - 0.5, report["history"]
    assert report["val_nmse_db"] == min(score for _, _, score in report["history"])
    np.testing.assert_allclose(nmse_db(predictor.predict(past), train.future), report["val_nmse_db"], atol=1e-3)
    path = predictor.save(tmp_path / "lam.safetensors")
    np.testing.assert_array_equal(load_lam(path).predict(past), predictor.predict(past))
