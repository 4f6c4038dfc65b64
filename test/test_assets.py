"""Setup prepared the real models and bags in the cache folder, and they load without a model hub."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import requires_gemma
from edge_lam.assets import AssetMissingError, efficientnet_lite0_onnx, evo_bags_dir, gemma3_dir, smollm2_dir
from edge_lam.assets.cache import gemma3_skipped, require


def test_smollm2_folder_holds_the_30_layer_model_and_its_tokenizer():
    folder = smollm2_dir()
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert (folder / "model.safetensors").stat().st_size > 500e6  # fp32 weights, dequantised from the GGUF
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in chat


def test_efficientnet_onnx_gives_imagenet_logits():
    import onnxruntime

    session = onnxruntime.InferenceSession(str(efficientnet_lite0_onnx()), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


def test_evo_bags_are_real_rosbags():
    from rosbags.highlevel import AnyReader

    with AnyReader([evo_bags_dir() / "nav2_turtlebot.mcap"]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/odom"] == "nav_msgs/msg/Odometry"
        odom = [c for c in reader.connections if c.topic == "/odom"]
        count = sum(1 for _ in reader.messages(connections=odom))
    assert count > 100
    with AnyReader([evo_bags_dir() / "tf_example"]) as reader:  # rosbag2 sqlite3
        assert reader.message_count > 0


def test_a_missing_asset_says_how_to_make_it(tmp_path):
    with pytest.raises(AssetMissingError, match="make setup"):
        require(tmp_path / "nothing", "Some model")


@requires_gemma
def test_gemma_folder_holds_the_18_layer_base_model_and_its_tokenizer():
    folder = gemma3_dir()
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("gemma3_text", 18, 640)
    assert (folder / "model.safetensors").stat().st_size > 1e9  # fp32 weights, dequantised from the GGUF
    assert not list(folder.glob("*.gguf"))  # the joined GGUF was a temporary file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template is None  # a base model: the gateway gives it plain text
    assert tokenizer("Hello")["input_ids"][0] == tokenizer.bos_token_id


def test_skipping_gemma_leaves_a_marker_and_asking_for_it_says_why(tmp_path, monkeypatch):
    from edge_lam.prepare import steps

    monkeypatch.setenv("EDGE_LAM_CACHE", str(tmp_path))
    every_step = steps.steps
    monkeypatch.setattr(steps, "steps", lambda: [s for s in every_step() if s.name == steps.GEMMA_STEP])
    assert steps.prepare_all(skip_gemma=True) == 0
    assert gemma3_skipped()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["gemma3-270m.skipped"]  # nothing built
    with pytest.raises(AssetMissingError, match="skipped at setup"):
        gemma3_dir()
    for value, skip in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("EDGE_LAM_SKIP_GEMMA", value)
        assert steps.skip_gemma_by_default() is skip
