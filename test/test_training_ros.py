"""Collaborative fine-tuning over Fast DDS: an edge trainer and robot trainers in their own processes, on a tiny
randomly initialised Llama (SmolLM2's tokenizer beside it) so that a round takes well under a second."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import Tensor, TensorList
from parameter_calls import set_parameters
from rclpy.serialization import serialize_message
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import finish
from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.adapters import load_adapter
from edge_lam.model.decompose import describe
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.ros.bounds import DIAGNOSTICS_DEPTH
from edge_lam.ros.qos import LATCHED, TENSORS
from edge_lam.training.adapters import LoraSettings
from edge_lam.training.compression import codec_from_spec
from edge_lam.training.split import IGNORE, SplitBottom
from edge_lam.trust.checks import Stamper
from edge_lam.trust.keys import load_signing_key, make_keys
from edge_lam.wire.signing import sign
from edge_lam.wire.training import decode_stream, encode_state, pack, unpack
from ros_client import RosClient

HIDDEN, CUT, ROUNDS, STEPS = 64, 2, 2, 2
ROBOTS = {"robot_a": 0, "robot_b": 2}  # shares 0 and 2 of 3: 33 and 30 training pairs, so FedAvg weights differ
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 4-layer, 64-wide Llama with SmolLM2's vocabulary, saved as a transformers folder with the tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def common(tiny_model) -> list[str]:
    return ["-p", f"model:={tiny_model}", "-p", f"cut_layer:={CUT}", "-p", "lora_rank:=4", "-p", "lora_alpha:=8.0",
            "-p", "lora_target_modules:=[q_proj,v_proj,o_proj]", "-p", "learning_rate:=0.01",
            "-p", "adapter_codec:=fp32"]


def start_edge(processes, namespace: str, tiny_model, *params: str):
    return processes.start(sys.executable, "-m", "edge_lam.training.edge_trainer_node", "--ros-args",
                           "-r", f"__ns:={namespace}", *common(tiny_model), "-p", "gradient_codec:=topk:0.25", *params)


def start_robot(processes, namespace: str, tiny_model, robot: str, index: int, ledger):
    return processes.start(sys.executable, "-m", "edge_lam.training.robot_trainer_node", "--ros-args",
                           "-r", f"__ns:={namespace}", "-r", f"__node:={robot}", *common(tiny_model),
                           "-p", "robots:=3", "-p", f"robot_index:={index}", "-p", f"steps_per_round:={STEPS}",
                           "-p", "batch_size:=4", "-p", "activation_codec:=int8", "-p", f"ledger_path:={ledger}")


def weights(msg: TensorList, fields: tuple[str, ...]) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """A message's fields and its codec-encoded tensors (weights, activation, gradient), as float64."""
    got = unpack(msg, fields)
    streams = {name.rsplit("/", 2)[0] for name in got.arrays if name.count("/") >= 2}
    return got.fields, {name: decode_stream(got.arrays, name).double() for name in sorted(streams)}


def l1_logged(output: str, round_: int) -> float:
    (value,) = re.findall(rf"loaded the global adapter of round {round_}: \d+ tensors, L1 (\S+)", output)
    return float(value)


def initial_adapter(tiny_model) -> dict[str, torch.Tensor]:
    """The robots' adapter before any round, as the edge makes it from its seed (0)."""
    lora = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "o_proj"))
    state = SplitBottom(describe(load_model(str(tiny_model))), CUT, lora, seed=0).trainable_state()
    return {name: tensor.double() for name, tensor in state.items()}


def test_two_robots_train_and_the_edge_averages_their_adapters_for_every_robot(processes, tiny_model, tmp_path):
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("observer", namespace)
    try:
        globals_seen = client.collect(TensorList, "training/global_adapter", LATCHED)
        updates = client.collect(TensorList, "training/adapters", TENSORS)
        activations = client.collect(TensorList, "training/activations", TENSORS)
        robots = {name: start_robot(processes, namespace, tiny_model, name, index, tmp_path / f"{name}.json")
                  for name, index in ROBOTS.items()}
        # The robots wait for the edge's adapter. Discovery between processes that did not start together can
        # take a DDS announcement period (3 s), so the observer must know their writers before training begins.
        assert client.spin_until(lambda: all(client.node.count_publishers(f"{namespace}/training/{topic}") == 2
                                             for topic in ("activations", "adapters")), TIMEOUT_S)
        edge_ledger = tmp_path / "edge.json"
        adapter_path = tmp_path / "fleet.safetensors"
        edge = start_edge(processes, namespace, tiny_model, "-p", f"rounds:={ROUNDS}", "-p", "min_robots:=2",
                          "-p", f"ledger_path:={edge_ledger}", "-p", f"adapter_path:={adapter_path}")

        def finished() -> bool:
            return any(unpack(m, ("round", "rounds")).fields["round"] == ROUNDS for m in globals_seen)

        assert client.spin_until(finished, TIMEOUT_S), "the edge did not finish its rounds"
        outputs = {}
        for name, process in robots.items():
            rc, outputs[name] = finish(process, 30.0)
            assert rc == 0, outputs[name]

        # A robot that starts after the run gets the final adapter (latched), and has nothing left to train.
        late = start_robot(processes, namespace, tiny_model, "robot_late", 1, tmp_path / "robot_late.json")
        rc, late_output = finish(late, TIMEOUT_S)
        assert rc == 0, late_output
    finally:
        client.close()
    edge.send_signal(signal.SIGINT)
    rc, edge_output = finish(edge, 10.0)
    assert "[ERROR]" not in edge_output, edge_output

    # Every merged adapter is the previous one plus the sample-weighted average of the robots' updates (that is,
    # the weighted average of their trained adapters); the observer saw every update but may have joined the
    # latched topic late, so the merges are followed from the initial adapter to the final one published.
    by_round: dict[int, dict[str, tuple[int, dict[str, torch.Tensor]]]] = defaultdict(dict)
    for msg in updates:
        fields, update = weights(msg, ("round", "samples", "cut"))
        assert fields["cut"] == CUT
        by_round[fields["round"]][msg.header.frame_id] = (fields["samples"], update)
    merged = [initial_adapter(tiny_model)]
    for round_ in range(ROUNDS):
        assert sorted(by_round[round_]) == sorted(ROBOTS)
        (n_a, d_a), (n_b, d_b) = by_round[round_]["robot_a"], by_round[round_]["robot_b"]
        assert (n_a, n_b) == (33, 30)
        assert any(not torch.allclose(d_a[n], d_b[n]) for n in d_a), "both robots sent the same update"
        merged.append({name: w + (n_a * d_a[name] + n_b * d_b[name]) / (n_a + n_b) for name, w in merged[-1].items()})
    fields, final = weights(globals_seen[-1], ("round", "rounds"))
    assert fields == {"round": ROUNDS, "rounds": ROUNDS}
    assert sorted(final) == sorted(merged[0])
    for name in final:
        torch.testing.assert_close(final[name], merged[-1][name], rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.allclose(final[n], merged[0][n]) for n in final), "the rounds changed nothing"

    # The edge wrote both halves' adapters with their settings: the robots' final one below the cut, its top above,
    # a file a shard of the model serves (doc/chain.md)
    adapter = load_adapter(adapter_path)
    assert adapter.settings == LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "o_proj"))
    assert adapter.model == str(tiny_model) and adapter.layers == [0, 1, 2, 3]
    for (layer, path), (a, b) in adapter.weights.items():
        if layer < CUT:
            torch.testing.assert_close(a.double(), final[f"layers.{layer}.{path}.lora_A.weight"])
            torch.testing.assert_close(b.double(), final[f"layers.{layer}.{path}.lora_B.weight"])
    served = ShardCore(load_model(str(tiny_model)), [ModuleSpec.parse("blocks:0:4")], adapters={"fleet": adapter})
    assert served.adapted_layers == 4 * 3

    # Both robots loaded every merged adapter (they log its L1 norm) and trained the next round with it.
    l1 = [sum(float(t.abs().sum()) for t in state.values()) for state in merged]
    for name, output in outputs.items():
        for round_ in range(ROUNDS + 1):
            assert l1_logged(output, round_) == pytest.approx(l1[round_], rel=1e-6), name
        rounds_sent = sorted({unpack(m, ("round", "step", "cut")).fields["round"] for m in activations
                              if m.header.frame_id == name})
        assert rounds_sent == list(range(ROUNDS)), name
    assert l1_logged(late_output, ROUNDS) == pytest.approx(l1[ROUNDS], rel=1e-6)
    assert "rounds are over" in late_output

    # The ledgers: per-round totals are sums of their messages, sizes are what the serializer writes, and the
    # edge's messages are the two robots' messages.
    ledger = json.loads(edge_ledger.read_text())
    messages = ledger["messages"]
    per_round: dict[str, int] = defaultdict(int)
    for message in messages:
        per_round[str(message["round"])] += message["bytes"]
    assert ledger["summary"]["per_round"] == per_round and sorted(per_round) == [str(r) for r in range(ROUNDS)]
    assert ledger["summary"]["total_bytes"] == sum(per_round.values())
    assert ledger["run"]["finished"] is True
    kinds = defaultdict(int)
    for message in messages:
        kinds[message["kind"]] += 1
    robots_n = len(ROBOTS)
    assert kinds == {"activation": robots_n * ROUNDS * STEPS, "gradient": robots_n * ROUNDS * STEPS,
                     "adapter": robots_n * ROUNDS, "global_adapter": robots_n * (ROUNDS + 1)}
    for msg in updates:
        (entry,) = [m for m in messages if m["kind"] == "adapter" and m["sender"] == msg.header.frame_id
                    and m["round"] == unpack(msg, ("round", "samples", "cut")).fields["round"]]
        assert entry["bytes"] == len(serialize_message(msg))
    robot_ledgers = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ROBOTS]
    robot_messages = sorted((m["round"], m["direction"], m["kind"], m["bytes"]) for r in robot_ledgers
                            for m in r["messages"])
    assert robot_messages == sorted((m["round"], m["direction"], m["kind"], m["bytes"]) for m in messages)
    late_ledger = json.loads((tmp_path / "robot_late.json").read_text())
    assert [m["kind"] for m in late_ledger["messages"]] == ["global_adapter"]


def bad_activations() -> list[tuple[str, TensorList]]:
    """Activations the edge must refuse, each with a word of the error it should log."""
    good = {"activation/fp32/data": np.zeros((1, 5, HIDDEN), np.float32),
            "targets": np.array([[IGNORE, IGNORE, 7, 8, 9]], np.int32)}
    fields = {"round": 0, "step": 0, "cut": CUT}
    short = Tensor(name="targets", dtype="int32", shape=[1, 5], data=bytes(7))
    truncated = pack("probe", fields, {})[0]
    truncated.tensors.append(short)
    wrong_hidden = {**good, "activation/fp32/data": np.zeros((1, 5, HIDDEN + 1), np.float32)}
    nan = {**good, "activation/fp32/data": np.full((1, 5, HIDDEN), np.nan, np.float32)}
    huge_sparse = {**good, "activation/topk:0.1/values": np.zeros(1, np.float16),
                   "activation/topk:0.1/indices": np.zeros(1, np.int32),
                   "activation/topk:0.1/scale": np.ones(1, np.float32),
                   "activation/topk:0.1/shape": np.array([10**6, 10**6, 10**6])}
    del huge_sparse["activation/fp32/data"]
    long_sparse = {**huge_sparse, "activation/topk:0.1/shape": np.array([1, 4200, HIDDEN]),
                   "targets": np.full((1, 4200), 7, np.int32)}  # 16.8 KB of targets: the 9.8 GB of the findings
    negative = {**huge_sparse, "activation/topk:0.1/shape": np.array([1, 5, HIDDEN]),
                "activation/topk:0.1/indices": np.full(1, -1, np.int32)}
    extreme = {**good, "activation/fp32/data": np.full((1, 5, HIDDEN), 3e38, np.float32)}  # finite, overflows
    return [
        ("expected 20", truncated),
        ("integer scalar 'step'", pack("probe", {"round": 0, "cut": CUT}, good)[0]),
        ("shape", pack("probe", fields, wrong_hidden)[0]),
        ("inf or NaN", pack("probe", fields, nan)[0]),
        ("shape", pack("probe", fields, huge_sparse)[0]),
        ("not the open round", pack("probe", {**fields, "round": 5}, good)[0]),
        ("this edge holds the top from layer", pack("probe", {**fields, "cut": CUT + 1}, good)[0]),
        ("no robot id", pack("", fields, good)[0]),
        ("token ids", pack("probe", fields, {**good, "targets": np.array([[10**9, 0, 0, 0, 0]], np.int32)})[0]),
        ("no answer tokens", pack("probe", fields, {**good, "targets": np.full((1, 5), IGNORE, np.int32)})[0]),
        ("over max_tokens_per_message=2048", pack("probe", fields, long_sparse)[0]),
        ("indices outside", pack("probe", fields, negative)[0]),
        ("not finite", pack("probe", fields, extreme)[0]),
    ]


def test_the_edge_logs_malformed_activations_and_keeps_serving(processes, tiny_model):
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("prober", namespace)
    try:
        globals_seen = client.collect(TensorList, "training/global_adapter", LATCHED)
        gradients = client.collect(TensorList, "training/gradients", TENSORS)
        edge = start_edge(processes, namespace, tiny_model, "-p", "rounds:=1")
        assert client.spin_until(lambda: globals_seen, TIMEOUT_S), "the edge published no global adapter"
        publisher = client.publisher(TensorList, "training/activations", TENSORS)
        assert client.spin_until(lambda: client.node.count_publishers(f"{namespace}/training/gradients") == 1, 30.0)
        bad = bad_activations()
        for _, msg in bad:
            publisher.publish(msg)
        activation = np.random.default_rng(0).standard_normal((2, 5, HIDDEN)).astype(np.float32)
        targets = np.array([[IGNORE, IGNORE, 7, 8, 9], [IGNORE, 3, 4, IGNORE, IGNORE]], np.int32)
        good, _ = pack("probe", {"round": 0, "step": 0, "cut": CUT},
                       {"activation/fp32/data": activation, "targets": targets})
        publisher.publish(good)

        def good_answered() -> bool:
            """The good activation is a batch of two, the malformed ones of one: its gradient says which it answers."""
            return any(weights(m, ("round", "step"))[1]["gradient"].shape[0] == 2 for m in gradients)

        # One topic keeps its order: a gradient for a malformed activation would have come before this one.
        assert client.spin_until(good_answered, 30.0), "no gradient after the malformed activations"
    finally:
        client.close()
    assert edge.poll() is None, "the edge died"
    edge.send_signal(signal.SIGINT)
    _, output = finish(edge, 10.0)
    (reply,) = gradients
    fields, gradient = weights(reply, ("round", "step"))
    assert reply.header.frame_id == "probe" and fields == {"round": 0, "step": 0}
    assert gradient["gradient"].shape == (2, 5, HIDDEN) and gradient["gradient"].abs().sum() > 0
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == len(bad), output
    for (word, _), line in zip(bad, errors, strict=True):
        assert word in line, (word, line)


FUZZ_MESSAGES = 300
FUZZ_ADAPTERS = 100


def fuzz_activations(rng: np.random.Generator, count: int) -> list[TensorList]:
    """Seeded random activation messages, extreme-but-valid and malformed: codecs and their parts with shapes
    that fit or not, magnitudes from 1e-40 to 3e38, inf and NaN, targets of any integer (or float) dtype and range,
    parts missing or stated far larger than sent. Each is either trained on and answered, or logged and dropped."""
    specs = ("fp32", "fp16", "int8", "topk:0.25")
    messages = []
    for step in range(count):
        batch, length = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        hidden = HIDDEN if rng.random() < 0.8 else int(rng.integers(1, 2 * HIDDEN))
        activation = rng.standard_normal((batch, length, hidden)) * 10.0 ** rng.uniform(-40, 38.5)
        if rng.random() < 0.1:
            activation.flat[int(rng.integers(activation.size))] = rng.choice([np.inf, -np.inf, np.nan])
        spec = specs[int(rng.integers(len(specs)))]
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 on purpose: inf
            wide = activation.astype(np.float32)
        try:
            arrays = codec_from_spec(spec).encode(torch.from_numpy(wide)).wire("activation")
        except ValueError:  # inf or NaN: sent raw instead
            arrays = {"activation/fp32/data": wide}
        dtype = rng.choice(["int32", "int64", "int8", "uint8", "float32"])
        targets = rng.integers(-200, 49_300, (batch, length)).astype(dtype)
        targets[:, : max(1, length // 2)] = IGNORE if dtype in ("int32", "int64", "float32") else 0
        arrays["targets"] = targets
        mutation = rng.random()
        if mutation < 0.1 and arrays:
            arrays.pop(sorted(arrays)[int(rng.integers(len(arrays)))])
        elif mutation < 0.2:
            name = sorted(arrays)[int(rng.integers(len(arrays)))]
            if name.endswith("/shape"):
                arrays[name] = rng.integers(-2**40, 2**40, arrays[name].shape)
            else:
                arrays[name] = arrays[name].reshape(-1)[: int(rng.integers(0, arrays[name].size + 1))]
        fields = {"round": 0 if rng.random() < 0.9 else int(rng.integers(-2**62, 2**62)), "step": step,
                  "cut": CUT if rng.random() < 0.95 else int(rng.integers(-5, 5))}
        messages.append(pack("fuzz", fields, arrays)[0])
    return messages


def fuzz_adapters(rng: np.random.Generator, count: int, shapes: dict[str, tuple[int, ...]]) -> list[TensorList]:
    """Seeded random adapter updates: every weight or some, of its shape or another, magnitudes from 1e-40 to 1e38,
    any codec, any sample count."""
    specs = ("fp32", "fp16", "int8", "topk:0.25")
    messages = []
    for _ in range(count):
        state = {}
        for name, shape in shapes.items():
            if rng.random() < 0.05:
                continue
            if rng.random() < 0.05:
                shape = (*shape[:-1], shape[-1] + 1)
            state[name] = torch.from_numpy((rng.standard_normal(shape) * 10.0 ** rng.uniform(-40, 38)).astype(
                np.float32))
        if rng.random() < 0.05:
            state["layers.0.extra"] = torch.ones(2)
        samples = int(rng.choice([0, -1, 1, 33, 2**62]))
        arrays = encode_state(state, codec_from_spec(specs[int(rng.integers(len(specs)))]))
        messages.append(pack("fuzz", {"round": 0, "samples": samples, "cut": CUT}, arrays)[0])
    return messages


def test_the_edge_survives_a_fuzz_of_its_activations_and_its_token_bound_is_live(processes, tiny_model):
    """Crash 6 of the findings: the edge trainer ended during a fuzz of its activations topic (a finite activation
    of 3e38 overflowed the top: NaN weights, a gradient that could not be encoded). After a seeded fuzz the edge
    still answers a good activation; max_tokens_per_message set through ROS takes effect at once."""
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("fuzzer", namespace)
    try:
        logs = client.collect_logs()
        diagnostics = client.collect(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
        globals_seen = client.collect(TensorList, "training/global_adapter", LATCHED)
        gradients = client.collect(TensorList, "training/gradients", TENSORS)
        # two robots make a round: the fuzzer's valid updates alone do not close it
        edge = start_edge(processes, namespace, tiny_model, "-p", "rounds:=1", "-p", "min_robots:=2")
        assert client.spin_until(lambda: globals_seen, TIMEOUT_S), "the edge published no global adapter"
        publisher = client.publisher(TensorList, "training/activations", TENSORS)
        uploads = client.publisher(TensorList, "training/adapters", TENSORS)
        assert client.spin_until(lambda: client.node.count_publishers(f"{namespace}/training/gradients") == 1, 30.0)
        rng = np.random.default_rng(15)
        shapes = {name: tuple(t.shape) for name, t in initial_adapter(tiny_model).items()}
        for msg in fuzz_activations(rng, FUZZ_MESSAGES):
            publisher.publish(msg)
            client.spin_for(0.002)
        with np.errstate(over="ignore", invalid="ignore"):
            adapter_fuzz = fuzz_adapters(rng, FUZZ_ADAPTERS, shapes)
        for msg in adapter_fuzz:
            uploads.publish(msg)
            client.spin_for(0.002)
        activation = np.random.default_rng(0).standard_normal((2, 5, HIDDEN)).astype(np.float32)
        targets = np.array([[IGNORE, IGNORE, 7, 8, 9], [IGNORE, 3, 4, IGNORE, IGNORE]], np.int32)

        def good(step: int) -> TensorList:
            return pack("probe", {"round": 0, "step": step, "cut": CUT},
                        {"activation/fp32/data": activation, "targets": targets})[0]

        def answered(step: int) -> bool:
            return any(m.header.frame_id == "probe" and unpack(m, ("round", "step")).fields["step"] == step
                       for m in gradients)

        assert all(r.successful for r in set_parameters(client, f"{namespace}/edge_trainer", max_tokens_per_message=9))
        publisher.publish(good(0))
        assert client.spin_until(lambda: any(log.msg.startswith("activation from 'probe'") and
                                             "10 tokens, over max_tokens_per_message=9" in log.msg for log in logs),
                                 60.0), "the lowered bound was not applied"
        assert all(r.successful for r in set_parameters(client, f"{namespace}/edge_trainer",
                                                         max_tokens_per_message=2048))
        publisher.publish(good(1))
        assert client.spin_until(lambda: answered(1), 60.0), "no gradient for a good activation after the fuzz"
        assert not answered(0)
        # the edge's diagnostics show how close activations come to the bound (the last one: 2 x 5 tokens)
        assert client.spin_until(lambda: any(
            status.name == f"{namespace}/edge_trainer: bounds"
            and [(kv.key, kv.value) for kv in status.values] == [("tokens_per_message", "10 / 2048")]
            for array in diagnostics for status in array.status), 30.0)
        assert edge.poll() is None, "the edge died"
        fuzz_answers = [m for m in gradients if m.header.frame_id == "fuzz"]
        for reply in fuzz_answers:  # what the edge did answer is finite
            assert torch.isfinite(weights(reply, ("round", "step"))[1]["gradient"]).all()
        refused = [log.msg for log in logs if log.name.endswith("edge_trainer") and log.level >= 40]
        taken = [log.msg for log in logs if log.name.endswith("edge_trainer") and "update from 'fuzz'" in log.msg]
        assert len(fuzz_answers) + len(refused) + len(taken) >= FUZZ_MESSAGES + FUZZ_ADAPTERS, \
            (len(fuzz_answers), len(refused), len(taken))
    finally:
        client.close()
    edge.send_signal(signal.SIGINT)
    _, output = finish(edge, 10.0)
    assert "Traceback" not in output, output[-3000:]


def test_a_robot_ignores_a_global_adapter_it_cannot_train_from_and_goes_on(processes, tiny_model, tmp_path):
    """Crash 4 of the findings: a global adapter of weights 1e30 ended the robot (its activation could not be
    encoded). It is refused by max_adapter_weight; with the bound raised through ROS, the forward overflows and the
    adapter is ignored; the genuine adapter that follows is trained from."""
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("fake_edge", namespace)
    try:
        logs = client.collect_logs()
        activations = client.collect(TensorList, "training/activations", TENSORS)
        gradients = client.node.create_publisher(TensorList, "training/gradients", TENSORS)
        robot = start_robot(processes, namespace, tiny_model, "robot_a", 0, tmp_path / "ledger.json")
        adapters = client.publisher(TensorList, "training/global_adapter", LATCHED, timeout_s=TIMEOUT_S)
        assert client.spin_until(lambda: gradients.get_subscription_count() > 0, TIMEOUT_S)
        initial = {name: tensor.float() for name, tensor in initial_adapter(tiny_model).items()}
        codec = codec_from_spec("fp32")

        def robot_logged(text: str) -> bool:
            return any(log.name.endswith("robot_a") and text in log.msg for log in logs)

        huge = pack("", {"round": 0, "rounds": 1},
                    encode_state({n: torch.full_like(t, 1e30) for n, t in initial.items()}, codec))[0]
        adapters.publish(huge)
        assert client.spin_until(lambda: robot_logged("magnitude 1e+30, over 100"), TIMEOUT_S), "not refused"
        results = set_parameters(client, f"{namespace}/robot_a", max_adapter_weight=1e31)
        assert all(r.successful for r in results)
        adapters.publish(huge)
        assert client.spin_until(lambda: robot_logged("global adapter of round 0 ignored: training from it fails"),
                                 TIMEOUT_S), "the overflowing adapter was not ignored"
        assert not activations and robot.poll() is None
        adapters.publish(pack("", {"round": 0, "rounds": 1}, encode_state(initial, codec))[0])
        assert client.spin_until(lambda: activations, TIMEOUT_S), "no activation from the genuine adapter"
        fields, sent = weights(activations[0], ("round", "step", "cut"))
        assert fields == {"round": 0, "step": 0, "cut": CUT} and torch.isfinite(sent["activation"]).all()
        assert robot.poll() is None
    finally:
        client.close()


def test_with_trust_on_forged_uploads_and_a_forged_global_adapter_change_nothing(processes, tiny_model, tmp_path):
    """The edge trains only on activations signed by the robot they name; a robot follows only a global adapter a
    fleet key signed: a forged final adapter (round 1 of 1, well formed) would end its run."""
    make_keys(tmp_path / "keys", ["edge", "robot_a"])
    make_keys(tmp_path / "other", ["intruder"])
    store = tmp_path / "store"
    store.mkdir()
    for name in ("edge", "robot_a"):
        shutil.copy(tmp_path / "keys" / f"{name}.pub", store)
    trust = ["-p", f"trusted_keys:={store}"]
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("intruder", namespace)
    try:
        globals_seen = client.collect(TensorList, "training/global_adapter", LATCHED)
        gradients = client.collect(TensorList, "training/gradients", TENSORS)
        edge = start_edge(processes, namespace, tiny_model, "-p", "rounds:=1", "-p",
                          f"signing_key:={tmp_path / 'keys' / 'edge.key'}", *trust)
        assert client.spin_until(lambda: globals_seen, TIMEOUT_S), "the edge published no global adapter"
        assert globals_seen[0].signature.signer == "edge"
        activations = client.publisher(TensorList, "training/activations", TENSORS)
        assert client.spin_until(lambda: client.node.count_publishers(f"{namespace}/training/gradients") == 1, 30.0)
        robot_a = Stamper(load_signing_key(tmp_path / "keys" / "robot_a.key"))
        intruder = Stamper(load_signing_key(tmp_path / "other" / "intruder.key"))

        def activation(robot: str, batch: int) -> TensorList:
            targets = np.tile(np.array([[IGNORE, IGNORE, 7, 8, 9]], np.int32), (batch, 1))
            return pack(robot, {"round": 0, "step": 0, "cut": CUT},
                        {"activation/fp32/data": np.ones((batch, 5, HIDDEN), np.float32), "targets": targets})[0]

        now = time.time_ns()
        forged = {"unsigned": activation("robot_a", 1), "unknown signer": sign(activation("robot_a", 1), intruder, now),
                  "wrong identity": sign(activation("robot_b", 1), robot_a, now)}
        for msg in forged.values():
            activations.publish(msg)
        activations.publish(sign(activation("robot_a", 2), robot_a, now + 1))  # genuine: a batch of two
        assert client.spin_until(lambda: gradients, 30.0), "no gradient for the genuine activation"
        client.spin_for(1.0)
    finally:
        client.close()
    edge.send_signal(signal.SIGINT)
    _, edge_output = finish(edge, 10.0)
    (reply,) = gradients  # one topic keeps its order: an answer to a forgery would have come first
    assert reply.header.frame_id == "robot_a" and reply.signature.signer == "edge"
    assert weights(reply, ("round", "step"))[1]["gradient"].shape[0] == 2
    for reason in forged:
        assert f"training/activations: {reason}" in edge_output, (reason, edge_output)

    # A robot, trust on, offered a forged final adapter (unsigned, then by the intruder), then the edge's.
    namespace = f"/training_{uuid.uuid4().hex[:8]}"
    client = RosClient("intruder", namespace)
    try:
        robot = processes.start(
            sys.executable, "-m", "edge_lam.training.robot_trainer_node", "--ros-args", "-r", f"__ns:={namespace}",
            "-r", "__node:=robot_a", *common(tiny_model), "-p", "steps_per_round:=1", "-p", "batch_size:=2",
            "-p", f"signing_key:={tmp_path / 'keys' / 'robot_a.key'}", *trust)
        final = pack("", {"round": 1, "rounds": 1}, encode_state(initial_adapter(tiny_model), codec_from_spec("fp32")))
        adapters = client.publisher(TensorList, "training/global_adapter", LATCHED, timeout_s=60)
        adapters.publish(final[0])
        client.spin_for(0.5)
        adapters.publish(sign(final[0], intruder, time.time_ns()))
        client.spin_for(3.0)
        assert robot.poll() is None, f"a forged adapter ended the robot's run:\n{finish(robot, 5)[1]}"
        edge_key = Stamper(load_signing_key(tmp_path / "keys" / "edge.key"))
        adapters.publish(sign(final[0], edge_key, time.time_ns()))
        rc, robot_output = finish(robot, 30.0)
    finally:
        client.close()
    assert rc == 0 and "rounds are over" in robot_output, robot_output
    for reason in ("unsigned", "unknown signer"):
        assert f"training/global_adapter: {reason}" in robot_output, (reason, robot_output)
