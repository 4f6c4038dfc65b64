"""CSI on the wire and as tokens: the ChannelState round trip and what it refuses, the csi encoder's words for
channels whose answer is known (a beam's steering vector, a flat channel, a strong late tap, a static and a fast
fading channel), its patch embedding's layout, and the predictor node's core on windows of any length."""

from __future__ import annotations

import array

import numpy as np
import pytest
from edge_lam_msgs.msg import ChannelState

from edge_lam.air.beams import best_beams, dft_codebook
from edge_lam.air.csi_tokens import CsiBins, CsiEncoder
from edge_lam.air.predictors import LastCsi
from edge_lam.air.window_prediction import predict_window
from edge_lam.encoders.tokens import EncoderInputError
from edge_lam.wire.csi import MAX_CSI_VALUES, CsiWindow, from_channel_state, to_channel_state

T, A, S = 16, 16, 32
SPACING_HZ, PERIOD_S = 360e3, 0.5e-3


def random_csi(seed: int = 0, shape: tuple[int, ...] = (T, A, S)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def window(h: np.ndarray, noise_variance: float = 0.0) -> CsiWindow:
    return CsiWindow(h, "cell0/ue1", 3.5e9, SPACING_HZ, PERIOD_S, noise_variance)


def words(h: np.ndarray, noise_variance: float = 0.0) -> list[str]:
    encoder = CsiEncoder()
    return encoder.vocabulary.describe(encoder.encode(h, SPACING_HZ, PERIOD_S, noise_variance).ids)


def test_round_trip_keeps_every_value_in_the_documented_row_major_layout():
    h = random_csi()
    msg = to_channel_state(window(h, 0.01))
    assert list(msg.shape) == [T, A, S]
    t, a, s = 5, 11, 29
    i = (t * A + a) * S + s
    assert (msg.real[i], msg.imag[i]) == (h[t, a, s].real, h[t, a, s].imag)
    back = from_channel_state(msg)
    assert back.h.dtype == np.complex64 and np.array_equal(back.h, h)
    assert (back.link_id, back.carrier_hz, back.subcarrier_spacing_hz, back.period_s) == (
        "cell0/ue1", 3.5e9, SPACING_HZ, PERIOD_S)
    assert back.noise_variance == pytest.approx(0.01)


def bad(**fields) -> ChannelState:
    msg = to_channel_state(window(random_csi(shape=(2, 3, 4))))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(("msg", "why"), [
    (bad(shape=array.array("I", [6, 4])), r"must be \[time, antennas, subcarriers\]"),
    (bad(shape=array.array("I", [2, 3, 5])), "holds 30 values, the message has 24 real"),
    (bad(imag=array.array("f", [0.0] * 23)), "24 real and 23 imaginary"),
    (bad(shape=array.array("I", [4096, 4096, 4096]), real=array.array("f"), imag=array.array("f")),
     f"over the bound of {MAX_CSI_VALUES}"),
    (bad(shape=array.array("I", [2, 0, 4])), "every size must be"),
    (bad(real=array.array("f", [float("nan")] + [0.0] * 23)), "finite"),
    (bad(imag=array.array("f", [float("inf")] * 24)), "finite"),
    (bad(period_s=0.0), "period_s must be a positive number"),
    (bad(subcarrier_spacing_hz=float("nan")), "subcarrier_spacing_hz must be a positive number"),
    (bad(noise_variance=-1.0), "noise_variance must be >= 0"),
])
def test_a_malformed_message_is_refused_with_the_reason(msg, why):
    with pytest.raises(EncoderInputError, match=why):
        from_channel_state(msg)


def test_a_window_the_message_cannot_carry_is_refused_on_the_way_out():
    h = random_csi(shape=(2, 3, 4))
    h[1, 2, 3] = np.nan
    with pytest.raises(EncoderInputError, match="finite"):
        to_channel_state(window(h))
    with pytest.raises(EncoderInputError, match=r"\[time, antennas, subcarriers\]"):
        to_channel_state(window(h[0]))


@pytest.mark.parametrize("beam", [0, 7, 21])
def test_a_beams_steering_vector_gives_that_beams_token(beam):
    steering = dft_codebook(A, 2)[beam]
    h = np.broadcast_to(steering[None, :, None], (T, A, S)) * np.exp(1j * np.linspace(0, 3, S))[None, None, :]
    assert words(h.astype(np.complex64))[0] == f"beam-{beam:02d}"


def flat_over_frequency(seed: int = 1) -> np.ndarray:
    return np.broadcast_to(random_csi(seed, (T, A, 1)), (T, A, S)).copy()


def test_a_flat_channel_is_the_shortest_delay_spread_and_a_strong_late_tap_a_longer_one():
    flat = flat_over_frequency()
    encoder = CsiEncoder()
    assert words(flat)[1] == "delay-spread-short"
    assert encoder.features(flat, SPACING_HZ, PERIOD_S).delay_spread_s == pytest.approx(0.0, abs=1e-12)
    late_s = 8 / (S * SPACING_HZ)  # 694 ns: the 9th tap of the 32-point IFFT
    echo = 0.9 * np.exp(-2j * np.pi * np.arange(S) * SPACING_HZ * late_s)
    two_taps = flat * (1 + echo)[None, None, :]
    spread_ns = encoder.features(two_taps, SPACING_HZ, PERIOD_S).delay_spread_s * 1e9
    assert spread_ns == pytest.approx(late_s * 1e9 * 0.9 / 1.81, rel=1e-3)  # tau sqrt(p1 p2) / (p1 + p2): 345 ns
    assert words(two_taps)[1] == "delay-spread-very-long"


def fading(doppler_hz: float, paths: int = 64, seed: int = 2) -> np.ndarray:
    """Clarke's model: ``paths`` arrivals from uniform angles, each with its own phase per antenna and subcarrier."""
    rng = np.random.default_rng(seed)
    shifts = doppler_hz * np.cos(rng.uniform(0, 2 * np.pi, paths))
    phases = rng.uniform(0, 2 * np.pi, (paths, A, S))
    t = np.arange(T)[:, None, None, None] * PERIOD_S
    h = np.exp(1j * (2 * np.pi * shifts[None, :, None, None] * t + phases[None])).sum(axis=1) / np.sqrt(paths)
    return h.astype(np.complex64)


def test_a_static_channel_is_the_slowest_ageing_and_a_fast_fading_one_the_fastest():
    encoder = CsiEncoder()
    static = np.broadcast_to(random_csi(3, (1, A, S)), (T, A, S)).copy()
    assert words(static)[2] == "ageing-static"
    assert encoder.features(static, SPACING_HZ, PERIOD_S).doppler_hz == pytest.approx(0.0, abs=1.0)
    fast = fading(300.0)
    assert encoder.features(fast, SPACING_HZ, PERIOD_S).doppler_hz == pytest.approx(300.0, rel=0.15)
    assert words(fast)[2] == "ageing-fast"
    assert words(fading(60.0))[2] == "ageing-slow"


def test_the_noise_variance_keeps_noisy_estimates_of_a_static_channel_static():
    static = np.broadcast_to(random_csi(4, (1, A, S)), (T, A, S))
    noise_variance = 0.2  # 10 dB below the channel's mean power of 2
    noisy = (static + np.sqrt(noise_variance / 2) * random_csi(5)).astype(np.complex64)
    encoder = CsiEncoder()
    assert encoder.features(noisy, SPACING_HZ, PERIOD_S).doppler_hz > 100.0  # the noise looks like fast fading
    assert encoder.features(noisy, SPACING_HZ, PERIOD_S, noise_variance).doppler_hz < 30.0
    assert words(noisy, noise_variance)[2] == "ageing-static"


def test_the_embedding_is_one_row_per_slot_rms_normalised_real_parts_then_imaginary():
    h = 3.0 * random_csi(6)
    embedding = CsiEncoder().encode(h, SPACING_HZ, PERIOD_S).embedding
    assert embedding.shape == (T, 2 * A * S) and embedding.dtype == np.float32
    rms = np.sqrt(np.mean(np.abs(h) ** 2))
    t = 9
    np.testing.assert_allclose(embedding[t, :A * S] + 1j * embedding[t, A * S:], h[t].reshape(-1) / rms, rtol=1e-5)
    assert np.mean(embedding.astype(np.float64) ** 2) == pytest.approx(0.5)  # mean |h / rms|^2 = 1 over 2 floats


def test_the_vocabulary_names_every_beam_and_bucket_and_the_encoder_refuses_what_it_cannot_read():
    encoder = CsiEncoder(CsiBins(antennas=4, oversample=2))
    assert encoder.vocabulary.words == (
        "beam-0", "beam-1", "beam-2", "beam-3", "beam-4", "beam-5", "beam-6", "beam-7",
        "delay-spread-short", "delay-spread-medium", "delay-spread-long", "delay-spread-very-long",
        "ageing-static", "ageing-slow", "ageing-medium", "ageing-fast")
    assert encoder.vocabulary.version == ("1; DFT codebook 4 antennas x2, delay spread edges 80,120,200 ns, Doppler "
                                          "edges 30,100,200 Hz")
    with pytest.raises(EncoderInputError, match="16 antennas, the encoder's codebook 4"):
        encoder.encode(random_csi(), SPACING_HZ, PERIOD_S)
    with pytest.raises(EncoderInputError, match="all zeros"):
        encoder.encode(np.zeros((T, 4, S), np.complex64), SPACING_HZ, PERIOD_S)
    with pytest.raises(ValueError, match="3 names for 3 edges"):
        CsiBins(delay_spread_names=("a", "b", "c"))


def test_the_predictor_core_reads_the_newest_past_slots_and_ranks_the_beams_of_its_prediction():
    predictor = LastCsi(past=16, future=4)
    long_window = random_csi(7, (24, A, S))
    answer = predict_window(predictor, long_window, oversample=2, top_k=3)
    assert answer.predicted.shape == (4, A, S)
    assert np.array_equal(answer.predicted, np.repeat(long_window[-1:], 4, axis=0))
    assert list(answer.top_beams) == list(best_beams(answer.predicted, dft_codebook(A, 2), 3))
    assert answer.top_gains[0] >= answer.top_gains[1] >= answer.top_gains[2]
    with pytest.raises(EncoderInputError, match="has 15 slots, the last predictor reads 16"):
        predict_window(predictor, long_window[:15], oversample=2, top_k=3)
