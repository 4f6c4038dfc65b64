"""The air-interface nodes as users run them: a bag of CSI windows recorded with `edge-lam record` from the csi
source, replayed into the channel predictor and the csi encoder, gets one prediction and one token message per
window, in order, each answering its window (a second predictor serves a LAM trained for a few steps here, and
answers as the LAM does in this process); a malformed window gets a log line and nothing else, and the nodes go
on; a predictor whose model file is missing ends with a log line and status 1. The source's windows are the
bench's (the test split's estimates at 20 dB), stamped with their newest slot's time."""

from __future__ import annotations

import dataclasses
import pathlib
import uuid

import numpy as np
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import ChannelPrediction, ChannelState, SemanticTokens, Vocabulary
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader

from conftest import REPORTED, finish
from edge_lam.air.beams import beam_gains, dft_codebook
from edge_lam.air.channels import estimate, load_split
from edge_lam.air.channels import windows as cut
from edge_lam.air.csi_tokens import CsiEncoder
from edge_lam.assets.cache import air_channels_dir
from edge_lam.ros.qos import PREDICTIONS, RELIABLE_SENSOR_DATA, TOKENS, VOCABULARIES
from edge_lam.wire.csi import from_channel_state
from edge_lam.wire.stamps import to_ns
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
WINDOWS = 24  # six draws of the test split, four windows each
FUTURE, ANTENNAS, SUBCARRIERS = 4, 16, 32


def bag_windows(bag: pathlib.Path) -> list[ChannelState]:
    with AnyReader([bag]) as reader:
        return [deserialize_message(raw, ChannelState) for _, _, raw in reader.messages()]


def stamp(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


def tiny_lam(path: pathlib.Path):
    """A one-layer LAM trained for two steps on two draws: the node must load and run what train_lam saves."""
    from edge_lam.air.lam import LamSettings, load_lam, train_lam

    folder = air_channels_dir()
    train = cut(load_split(folder, "train").subset(2))
    val = cut(load_split(folder, "val").subset(1))
    predictor, _ = train_lam(train, val, LamSettings(layers=1, steps=2, batch=4, eval_every=1))
    predictor.save(path)
    return load_lam(path)


def test_a_recorded_bag_of_csi_gets_one_prediction_and_one_token_message_per_window(processes, tmp_path):
    ns = f"/air_{uuid.uuid4().hex[:8]}"
    lam = tiny_lam(tmp_path / "lam.safetensors")
    processes.start(LIB / "channel_predictor", "--ros-args", "-r", f"__ns:={ns}/lam", "-r", f"csi:={ns}/csi",
                    "-p", "predictor:=lam", "-p", f"model_path:={tmp_path / 'lam.safetensors'}")
    missing = processes.start(LIB / "channel_predictor", "--ros-args", "-r", f"__ns:={ns}/broken",
                              "-p", "predictor:=gru", "-p", f"model_path:={tmp_path / 'no_such.safetensors'}")
    processes.start(LIB / "channel_predictor", "--ros-args", "-r", f"__ns:={ns}", "-p", "top_k:=3")
    processes.start(LIB / "csi_encoder", "--ros-args", "-r", f"__ns:={ns}", "-p", "reliable_input:=true")
    bag = tmp_path / "csi_bag"
    live = f"{ns}/live/csi"
    record = processes.start(LIB / "edge-lam", "record", "--output", bag, "--topic", live,
                             "--type", f"{live}=edge_lam_msgs/msg/ChannelState", "--count", str(WINDOWS))
    source = processes.start(LIB / "csi_source", "--ros-args", "-r", f"__ns:={ns}", "-r", "csi:=live/csi",
                             "-p", f"count:={WINDOWS}", "-p", "rate_hz:=50.0", "-p", "wait_subscribers:=1")

    client = RosClient("air_test_client", ns)
    try:
        logs = client.collect_logs()
        predictions = client.collect(ChannelPrediction, "csi/prediction", PREDICTIONS)
        tokens = client.collect(SemanticTokens, "tokens/csi", TOKENS)
        lam_predictions = client.collect(ChannelPrediction, "lam/csi/prediction", PREDICTIONS)
        vocabulary = client.collect(Vocabulary, "tokens/csi/vocabulary", VOCABULARIES)
        source_rc, source_out = finish(source, timeout_s=60)
        record_rc, record_out = finish(record, timeout_s=30)
        assert (source_rc, record_rc) == (0, 0), f"{source_out}\n{record_out}"
        assert f"recorded {WINDOWS} messages" in record_out, record_out

        assert client.spin_until(lambda: vocabulary, 60), "the csi encoder did not come up"
        replay = processes.start(LIB / "edge-lam", "replay", bag, "--remap", f"{live}:={ns}/csi",
                                 "--wait-subscribers", "3", "--wait-timeout", "60")
        client.spin_until(lambda: replay.poll() is not None, 60)
        client.spin_until(lambda: min(len(predictions), len(tokens), len(lam_predictions)) >= WINDOWS, 30)
        replay_rc, replay_out = finish(replay, timeout_s=15)
        assert replay_rc == 0, replay_out
        REPORTED.append("CSI bag replayed into the predictor and the encoder: " + replay_out.strip().splitlines()[-1])

        windows = bag_windows(bag)
        assert len(windows) == WINDOWS and len(predictions) == WINDOWS and len(tokens) == WINDOWS
        assert len(lam_predictions) == WINDOWS
        for window_msg, prediction in zip(windows, lam_predictions, strict=True):
            assert prediction.header == window_msg.header and prediction.predictor == "lam"
            expected = lam.predict(from_channel_state(window_msg).h[None])[0]
            assert np.allclose(from_channel_state(prediction.predicted).h, expected, rtol=1e-3, atol=1e-4)
        assert len({stamp(w.header) for w in windows}) == WINDOWS
        codebook = dft_codebook(ANTENNAS, 2)
        encoder = CsiEncoder()
        assert (vocabulary[0].modality, tuple(vocabulary[0].words)) == ("csi", encoder.vocabulary.words)
        for window_msg, prediction, token in zip(windows, predictions, tokens, strict=True):
            window = from_channel_state(window_msg)
            assert prediction.header == window_msg.header and token.header == window_msg.header
            predicted = from_channel_state(prediction.predicted).h
            assert predicted.shape == (FUTURE, ANTENNAS, SUBCARRIERS)
            assert np.array_equal(predicted, np.repeat(window.h[-1:], FUTURE, axis=0))  # the `last` predictor
            assert to_ns(prediction.predicted.header.stamp) == to_ns(window_msg.header.stamp) + 500_000
            gains = beam_gains(predicted, codebook).mean(axis=0)
            assert prediction.beam == int(np.argmax(gains)) == prediction.top_beams[0]
            assert list(prediction.top_beams) == list(np.argsort(-gains, kind="stable")[:3])
            assert prediction.codebook_size == 32 and prediction.predictor == "last"
            expected = encoder.encode(window.h, window.subcarrier_spacing_hz, window.period_s, window.noise_variance)
            assert list(token.token_ids) == list(expected.ids)
            assert list(token.embedding.shape) == [16, 2 * ANTENNAS * SUBCARRIERS]
        assert [p.seq for p in predictions] == [t.seq for t in tokens] == list(range(WINDOWS))
        assert windows[0].noise_variance > 0 and windows[0].link_id == "cell0/ue0"
        test_set = load_split(air_channels_dir(), "test")  # estimated whole (the noise is scaled to its power)
        bench = cut(dataclasses.replace(test_set, h=estimate(test_set.h, 20.0, 0)).subset(WINDOWS // 4))
        assert all(np.array_equal(from_channel_state(w).h, past) for w, past in zip(windows, bench.past, strict=True))
        steps_ms = np.diff([to_ns(w.header.stamp) for w in windows]) / 1e6  # newest slots: 4 apart in a draw, then
        assert list(steps_ms) == ([2.0, 2.0, 2.0, 10.0] * 6)[:-1]         # 20 to the next draw's (0.5 ms slots)

        publisher = client.publisher(ChannelState, "csi", RELIABLE_SENSOR_DATA)
        malformed = windows[0]
        malformed.real[7] = float("nan")
        publisher.publish(malformed)
        good = windows[1]
        good.header.stamp.sec += 100
        publisher.publish(good)
        assert client.spin_until(lambda: len(predictions) > WINDOWS and len(tokens) > WINDOWS, 30)
        client.spin_for(0.5)
        assert [stamp(m.header) for m in predictions[WINDOWS:]] == [stamp(good.header)]
        assert [stamp(m.header) for m in tokens[WINDOWS:]] == [stamp(good.header)]
        for node in ("channel_predictor", "lam.channel_predictor", "csi_encoder"):
            rejected = [log.msg for log in logs if log.name == f"{ns[1:]}.{node}" and "rejected CSI window" in log.msg]
            assert len(rejected) == 1 and "finite" in rejected[0], (node, rejected)
        missing_rc, missing_out = finish(missing, timeout_s=30)
        assert missing_rc == 1 and "cannot load the gru predictor" in missing_out, missing_out
        assert "No such file" in missing_out and "Traceback" not in missing_out, missing_out
    finally:
        client.close()
