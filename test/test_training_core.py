"""The collaborative-training cores alone (no ROS): FedAvg, wire codecs and their byte counts, split LoRA against
the unsplit model, training on the domain set, and the byte ledger."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edge_lam.assets import evo_bags_dir
from edge_lam.model.decompose import describe
from edge_lam.model.loading import load_tokenizer
from edge_lam.training.adapters import (
    FederatedAdapters,
    LoraSettings,
    add_lora,
    fedavg,
    load_trainable_state,
    trainable_state,
)
from edge_lam.training.compression import Encoded, ErrorFeedback, codec_from_spec, wire_bytes
from edge_lam.training.domain_data import PROMPT, build_domain_set, make_batch
from edge_lam.training.ledger import ByteLedger
from edge_lam.training.split import IGNORE, AnswerScores, SplitBottom, SplitTop, answer_scores
from edge_lam.wire.training import BadMessage, decode_activation, decode_state, decode_stream, encode_state

BAG = "nav2_turtlebot.mcap"


def tiny_llama(vocab_size: int = 256, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised 4-layer Llama: the real model's structure at a size that trains in milliseconds.

    Weights are drawn 5x wider than Llama's default: with the default, the frozen tied head of a 64-wide model
    can't make any token much likelier than another, and no adapter could lower the loss.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def domain():
    return build_domain_set(evo_bags_dir() / BAG)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


# FedAvg


def test_fedavg_is_exact_on_hand_made_adapters():
    a = {"layers.0.q_proj.lora_A.weight": torch.tensor([[0.0, 4.0], [8.0, -2.0]]),
         "layers.0.q_proj.lora_B.weight": torch.tensor([[1.0], [3.0]])}
    b = {"layers.0.q_proj.lora_A.weight": torch.tensor([[8.0, 0.0], [0.0, 2.0]]),
         "layers.0.q_proj.lora_B.weight": torch.tensor([[5.0], [-1.0]])}
    merged = fedavg([a, b], [1, 3])  # weights 1/4 and 3/4
    assert list(merged) == list(a)
    assert torch.equal(merged["layers.0.q_proj.lora_A.weight"], torch.tensor([[6.0, 1.0], [2.0, 1.0]]))
    assert torch.equal(merged["layers.0.q_proj.lora_B.weight"], torch.tensor([[4.0], [0.0]]))
    assert torch.equal(fedavg([a], [7])["layers.0.q_proj.lora_B.weight"], a["layers.0.q_proj.lora_B.weight"])
    thirds = fedavg([{"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}], [2, 1])["w"]
    assert thirds.dtype == torch.float32 and thirds.item() == np.float32(4.0 / 3.0)  # one rounding, from float64


@pytest.mark.parametrize(("states", "counts", "message"), [
    ([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], [1, 1], "missing"),
    ([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], [1, 1], "shape"),
    ([{"w": torch.zeros(2)}, {"w": torch.zeros(2)}], [1, 0], "positive"),
    ([{"w": torch.zeros(2)}, {"w": torch.zeros(2)}], [1, -2], "positive"),
    ([{"w": torch.zeros(2)}], [1, 1], "sample counts"),
    ([], [], "at least one"),
])
def test_fedavg_refuses_mismatched_adapters_and_counts(states, counts, message):
    with pytest.raises(ValueError, match=message):
        fedavg(states, counts)


def test_federated_rounds_merge_contributions_and_serve_late_joiners():
    rounds = FederatedAdapters({"w": torch.zeros(2)})
    rounds.contribute("tb3_0", {"w": torch.tensor([2.0, 4.0])}, samples=30)
    rounds.contribute("tb3_1", {"w": torch.tensor([6.0, 0.0])}, samples=10)
    assert rounds.contributors == ("tb3_0", "tb3_1")
    merged = rounds.finish_round()
    assert rounds.round == 1 and torch.equal(merged["w"], torch.tensor([3.0, 3.0]))
    assert torch.equal(rounds.state["w"], torch.tensor([3.0, 3.0]))  # what a robot joining now is sent
    with pytest.raises(ValueError, match="no contributions"):
        rounds.finish_round()
    with pytest.raises(ValueError, match="shape"):
        rounds.contribute("tb3_2", {"w": torch.zeros(3)}, samples=5)


def test_adapter_state_names_use_model_layers_and_load_back():
    model = tiny_llama()
    arch = describe(model)
    layers = copy.deepcopy(getattr(arch.base, arch.layers)[2:4])
    add_lora(layers, LoraSettings(rank=2, target_modules=("q_proj", "v_proj")), seed=1)
    state = trainable_state(layers, first_layer=2)
    assert sorted(state) == sorted(f"layers.{i}.self_attn.{m}.lora_{ab}.weight"
                                   for i in (2, 3) for m in ("q_proj", "v_proj") for ab in "AB")
    assert state["layers.2.self_attn.v_proj.lora_B.weight"].shape == (32, 2)  # 2 kv heads x 16: B starts at zero
    changed = {name: torch.full_like(t, 0.5) for name, t in state.items()}
    load_trainable_state(layers, 2, changed)
    assert all(torch.equal(t, changed[n]) for n, t in trainable_state(layers, 2).items())
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(layers, 0, changed)  # the same weights named for layers 0-1


# Codecs


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(2, 7, 48, generator=generator)
    activation[..., 5] *= 300.0  # an outlier channel, as transformer hidden states have
    gradient = torch.randn(2, 7, 48, generator=generator) * 1e-6  # below float16's normal range
    return {"activation": activation, "gradient": gradient}


def _error_bound(spec: str, x: torch.Tensor, encoded: Encoded) -> torch.Tensor:
    """The per-element bound the compression module's docstring states, with float32 rounding slack."""
    m = x.abs().max()
    slack = 1e-6 * x.abs() + 1e-7 * m
    if spec == "fp32":
        return torch.zeros_like(x)
    if spec == "fp16":
        return 2.0**-11 * x.abs() + 2.0**-25 * m + slack
    if spec == "int8":
        return (x.reshape(-1, x.shape[-1]).abs().amax(dim=0) / 127.0 / 2.0).expand_as(x) * (1 + 1e-6) + slack
    sent = torch.zeros(x.numel(), dtype=torch.bool)
    sent[torch.from_numpy(encoded.arrays["indices"].astype(np.int64))] = True
    smallest_sent = x.reshape(-1)[sent].abs().min()
    kept = 2.0**-11 * x.abs() + 2.0**-25 * m + slack
    return torch.where(sent.reshape(x.shape), kept, smallest_sent.expand_as(x))


@pytest.mark.parametrize("spec", ["fp32", "fp16", "int8", "topk:0.1"])
@pytest.mark.parametrize("which", ["activation", "gradient"])
def test_codecs_round_trip_within_their_stated_bounds(spec, which):
    x = _tensors()[which]
    codec = codec_from_spec(spec)
    assert codec.spec == spec
    encoded = codec.encode(x)
    back = codec.decode(Encoded.from_wire(encoded.wire("act"), "act"))
    assert back.dtype == torch.float32 and back.shape == x.shape
    error, bound = (back - x).abs(), _error_bound(spec, x, encoded)
    assert (error <= bound).all(), f"worst excess {(error - bound).max()}"
    if spec == "topk:0.1":
        assert encoded.arrays["values"].size == math.ceil(0.1 * x.numel())
        assert (x.reshape(-1)[back.reshape(-1) == 0].abs().max() <= x.abs().reshape(-1).kthvalue(
            x.numel() - encoded.arrays["values"].size + 1).values)
    if which == "gradient" and spec != "topk:0.1":
        assert (error <= 1e-2 * x.abs().max()).all()  # tiny gradients do not underflow to zero


def test_codec_sizes_and_refusals():
    x = torch.randn(4, 16, 576)
    data = {spec: sum(a.nbytes for a in codec_from_spec(spec).encode(x).arrays.values())
            for spec in ("fp32", "fp16", "int8", "topk:0.05")}
    assert data["fp32"] == x.numel() * 4
    assert data["fp16"] == x.numel() * 2 + 4
    assert data["int8"] == x.numel() + 576 * 4
    assert data["topk:0.05"] == math.ceil(0.05 * x.numel()) * 6 + 4 + 3 * 8
    for spec in ("fp8", "topk:0", "topk:1.5", "topk:"):
        with pytest.raises(ValueError, match="codec"):
            codec_from_spec(spec)
    with pytest.raises(ValueError, match="inf or NaN"):
        codec_from_spec("int8").encode(torch.tensor([[1.0, math.inf]]))
    with pytest.raises(ValueError, match="cannot decode"):
        codec_from_spec("fp16").decode(codec_from_spec("int8").encode(x))


def malformed_parts() -> list[tuple[str, dict[str, np.ndarray], str]]:
    """(codec, parts, why) for a tensor of shape [2, 3, 8]: each set of parts is small, and decoding any without
    the check would allocate what the parts claim, index out of range or give a tensor of another shape."""
    shape = np.array([2, 3, 8], np.int64)
    sparse = {"values": np.ones(2, np.float16), "indices": np.array([0, 5], np.int32),
              "scale": np.ones(1, np.float32), "shape": shape}
    return [
        ("topk:0.1", {**sparse, "shape": np.array([10**6, 10**6, 8], np.int64)}, "stated shape"),
        ("topk:0.1", {**sparse, "indices": np.array([0, 48], np.int32)}, "indices outside"),
        ("topk:0.1", {**sparse, "indices": np.array([-1, 0], np.int32)}, "indices outside"),
        ("topk:0.1", {**sparse, "values": np.ones(49, np.float16), "indices": np.zeros(49, np.int32)}, "48 elements"),
        ("topk:0.1", {**sparse, "values": np.ones(3, np.float16)}, "indices for"),
        ("topk:0.1", {**sparse, "scale": np.full(1, np.nan, np.float32)}, "scale is inf or NaN"),
        ("topk:0.1", {**sparse, "indices": np.array([0, 5], np.int64)}, "expected int32"),
        ("int8", {"q": np.zeros((2, 3, 1), np.int8), "scale": np.ones(8, np.float32)}, "part 'q'"),
        ("int8", {"q": np.zeros((2, 3, 8), np.int8), "scale": np.ones(10**4, np.float32)}, "part 'scale'"),
        ("fp16", {"data": np.zeros((2, 3, 8), np.float16), "scale": np.full(1, np.inf, np.float32)}, "inf or NaN"),
        ("fp16", {"data": np.zeros((2, 3, 8), np.float16)}, "parts"),
        ("fp32", {"data": np.zeros((2, 3, 8), np.float64)}, "expected float32"),
    ]


@pytest.mark.parametrize(("spec", "parts", "why"), malformed_parts())
def test_codec_parts_are_checked_against_the_expected_shape_before_decoding(spec, parts, why):
    """Findings: a 16.8 KB training message made the edge allocate 9.8 GB. What a receiver expects is checked first."""
    with pytest.raises(ValueError, match=why):
        codec_from_spec(spec).decode(Encoded(spec, parts), (2, 3, 8))
    with pytest.raises(BadMessage, match=why):
        decode_stream(Encoded(spec, parts).wire("activation"), "activation", (2, 3, 8))
    good = codec_from_spec(spec).encode(torch.randn(2, 3, 8))
    assert decode_stream(good.wire("activation"), "activation", (2, 3, 8)).shape == (2, 3, 8)


def test_activation_messages_are_bounded_in_tokens_and_weights_in_magnitude():
    targets = np.full((1, 4200), 7, np.int32)  # 16.8 KB: what made the edge allocate 9.8 GB
    arrays = {"targets": targets, **codec_from_spec("topk:0.1").encode(torch.zeros(1, 1, 64)).wire("activation")}
    with pytest.raises(BadMessage, match="4200 tokens, over max_tokens_per_message=2048"):
        decode_activation(arrays, hidden_size=64, vocab_size=256, max_tokens=2048)
    arrays = {"targets": targets[:, :5], **codec_from_spec("fp16").encode(torch.ones(1, 5, 64)).wire("activation")}
    activation, wide = decode_activation(arrays, hidden_size=64, vocab_size=256, max_tokens=5)
    assert activation.shape == (1, 5, 64) and wide.dtype == torch.int64
    state = {"w": torch.full((2, 2), 1e30)}
    with pytest.raises(BadMessage, match="magnitude 1e\\+30, over 100"):
        decode_state(encode_state(state, codec_from_spec("fp16")), {"w": (2, 2)}, max_abs=100.0)
    assert decode_state(encode_state(state, codec_from_spec("fp16")), {"w": (2, 2)})["w"].max() == 1e30


@pytest.mark.parametrize("spec", ["int8", "topk:0.05"])
def test_error_feedback_keeps_the_accumulated_error_bounded(spec):
    """Sending a slowly changing weight update every step: with feedback, the sum of what arrived stays a bounded
    distance from the sum sent (the residual); without, the errors pile up with the steps."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(64, 32, generator=generator)
    plain, feedback = codec_from_spec(spec), ErrorFeedback(codec_from_spec(spec))
    sent = received_plain = received_feedback = torch.zeros_like(base)
    errors = {}
    for step in range(1, 101):
        update = base + 0.05 * torch.randn(64, 32, generator=generator)
        sent = sent + update
        received_plain = received_plain + plain.decode(plain.encode(update))
        received_feedback = received_feedback + feedback.decode(feedback.encode("lora_A", update))
        if step in (50, 100):
            errors[step] = ((received_plain - sent).norm(), (received_feedback - sent).norm())
    assert errors[100][0] > 1.3 * errors[50][0]  # without feedback: growing
    assert errors[100][1] < 1.1 * errors[50][1]  # with: bounded
    assert errors[100][1] < 0.25 * errors[100][0]
    feedback.encode("lora_A", torch.zeros(3))  # another shape: the stream starts afresh rather than failing
    feedback.reset()


def test_wire_bytes_count_what_the_serializer_writes():
    serialization = pytest.importorskip("rclpy.serialization")
    msgs = pytest.importorskip("edge_lam_msgs.msg")
    from edge_lam.wire.tensors import to_msg

    x = _tensors()["activation"]
    targets = np.full((2, 7), IGNORE, dtype=np.int32)
    payloads = [{}, {"t": np.zeros(1, np.int8)}, {"odd_name": np.zeros((3,), np.bool_)}]
    payloads += [{**codec_from_spec(spec).encode(x).wire("activation"), "targets": targets}
                 for spec in ("fp32", "fp16", "int8", "topk:0.1")]
    for payload in payloads:
        message = msgs.TensorList(tensors=[to_msg(array, name) for name, array in payload.items()])
        assert wire_bytes(payload) == len(serialization.serialize_message(message)), sorted(payload)
        for signer in ("edge", "robot_0x"):  # signed: a signer name of either parity, a 64-byte signature
            message.header.frame_id = "tb3"
            message.signature = msgs.Signature(signer=signer, stamp_ns=1, signature=bytes(64))
            assert wire_bytes(payload, "tb3", signer, 64) == len(serialization.serialize_message(message))


# Split LoRA against the unsplit model


def _padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 12 and 9 real tokens, right-padded; the last 4 real tokens of each are the answer."""
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(1, vocab_size, (2, 12), generator=generator)
    input_ids[1, 9:] = 0
    mask = (input_ids != 0).long()
    targets = torch.full_like(input_ids, IGNORE)
    for row, length in enumerate((12, 9)):
        targets[row, length - 5:length - 1] = input_ids[row, length - 4:length]
    return input_ids, mask, targets


@pytest.mark.parametrize("lora", [LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj")),
                                  None], ids=["split_lora", "plain_split"])
def test_split_gradients_equal_the_unsplit_model(lora):
    model, cut = tiny_llama(), 1
    reference = copy.deepcopy(model)
    ref_arch = describe(reference)
    for p in reference.parameters():
        p.requires_grad_(False)
    ref_layers = getattr(ref_arch.base, ref_arch.layers)
    if lora is None:
        ref_layers.requires_grad_(True)
    else:
        add_lora(ref_layers, lora, seed=0)
        generator = torch.Generator().manual_seed(9)  # B is zero at the start: give every adapter weight a value
        load_trainable_state(ref_layers, 0, {n: 0.1 * torch.randn(t.shape, generator=generator)
                                             for n, t in trainable_state(ref_layers, 0).items()})
    full_state = trainable_state(ref_layers, 0)
    ref_params = [p for p in ref_layers.parameters() if p.requires_grad]

    arch = describe(model)
    bottom, top = SplitBottom(arch, cut, lora, lr=1e-3), SplitTop(arch, cut, lora, lr=1e-3)
    bottom.load_trainable_state({n: t for n, t in full_state.items() if int(n.split(".")[1]) < cut})
    top.load_trainable_state({n: t for n, t in full_state.items() if int(n.split(".")[1]) >= cut})

    input_ids, mask, targets = _padded_batch(model.config.vocab_size)
    logits = reference(input_ids, attention_mask=mask).logits
    answer = targets != IGNORE
    ref_loss = torch.nn.functional.cross_entropy(logits[answer], targets[answer])
    ref_loss.backward()

    wire = codec_from_spec("fp32")
    activation = wire.decode(wire.encode(bottom.forward(input_ids)))
    loss, grad = top.step(activation, targets)
    bottom.backward(wire.decode(wire.encode(grad)))

    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    split_grads = [p.grad for p in bottom.parameters + top.parameters]
    assert len(split_grads) == len(ref_params) == len(full_state)
    for name, split_grad, ref_param in zip(full_state, split_grads, ref_params, strict=True):
        assert ref_param.grad.abs().max() > 0, name
        torch.testing.assert_close(split_grad, ref_param.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_split_refuses_bad_cuts_and_gradients():
    arch = describe(tiny_llama())
    for cut in (0, 4):
        with pytest.raises(ValueError, match="cut"):
            SplitBottom(arch, cut)
    bottom = SplitBottom(arch, 2, LoraSettings(rank=2))
    with pytest.raises(RuntimeError, match="forward"):
        bottom.backward(torch.zeros(1, 3, 64))
    activation = bottom.forward(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        bottom.backward(torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="no answer tokens"):
        SplitTop(arch, 2, LoraSettings(rank=2)).step(activation, torch.full((1, 3), IGNORE))


def test_a_step_that_would_not_be_finite_is_refused_and_trains_nothing():
    """Finite but extreme activations (3e38) overflow inside the top: the edge's gradient could not be encoded and
    the step would have made the top's weights NaN for every robot."""
    top = SplitTop(describe(tiny_llama()), 2, LoraSettings(rank=2), lr=0.1)
    before = top.trainable_state()
    with pytest.raises(ValueError, match="not finite"):
        top.step(torch.full((1, 3, 64), 3e38), torch.tensor([[IGNORE, 5, 6]]))
    assert all(torch.equal(before[n], t) for n, t in top.trainable_state().items())
    loss, grad = top.step(torch.randn(1, 3, 64), torch.tensor([[IGNORE, 5, 6]]))
    assert math.isfinite(loss) and torch.isfinite(grad).all()


# Training on the domain set


def test_federated_split_lora_rounds_lower_the_heldout_loss(domain, tokenizer):
    """Two robots, compressed activations and gradients, adapters averaged each round: the held-out loss falls."""
    arch = describe(tiny_llama(vocab_size=len(tokenizer), seed=1))
    lora = LoraSettings(rank=8, target_modules=("q_proj", "v_proj", "o_proj"))
    robots = [SplitBottom(arch, 2, lora, lr=1e-2) for _ in range(2)]
    top = SplitTop(arch, 2, lora, lr=1e-2)
    rounds = FederatedAdapters(robots[0].trainable_state())
    heldout = make_batch(domain.heldout, tokenizer)

    def heldout_loss() -> float:
        robots[0].load_trainable_state(rounds.state)
        with torch.no_grad():
            return top.evaluate(robots[0].forward(heldout.input_ids), heldout.targets).loss

    before = heldout_loss()
    up, down = codec_from_spec("int8"), codec_from_spec("topk:0.1")
    shares = domain.robot_shares(2)
    for round_ in range(3):
        for index, (robot, share) in enumerate(zip(robots, shares, strict=True)):
            robot.load_trainable_state(rounds.state)
            for step in range(4):
                batch = make_batch(share[(8 * (round_ * 4 + step)) % len(share):][:8], tokenizer)
                _, grad = top.step(up.decode(up.encode(robot.forward(batch.input_ids))), batch.targets)
                robot.backward(down.decode(down.encode(grad)))
            rounds.contribute(f"robot_{index}", robot.trainable_state(), samples=len(share))
        rounds.finish_round()
    after = heldout_loss()
    assert after < before - 1.0, (before, after)
    assert not torch.equal(rounds.state["layers.0.self_attn.q_proj.lora_B.weight"],
                           torch.zeros_like(rounds.state["layers.0.self_attn.q_proj.lora_B.weight"]))


def test_answer_scores_count_exact_answers():
    head = torch.nn.Identity()  # "logits" are the hidden states themselves: 3 classes
    hidden = torch.tensor([[[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]],
                           [[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 2, IGNORE], [1, 2, IGNORE]])  # row 0 all right, row 1 wrong at its 2nd token
    scores = answer_scores(head, hidden, targets) + AnswerScores()
    assert (scores.tokens, scores.exact, scores.examples) == (4, 1, 2)
    assert scores.exact_match == 0.5 and scores.perplexity == pytest.approx(math.exp(scores.loss))


# The domain set


def test_domain_set_is_deterministic_disjoint_and_split_by_robot(domain):
    again = build_domain_set(evo_bags_dir() / BAG)
    assert again == domain
    assert len(domain.train) > 60 and len(domain.heldout) > 20
    assert not {p.question for p in domain.train} & {p.question for p in domain.heldout}  # every question unique
    sources = {p.source for p in domain.heldout}
    assert sources == {"odometry", "manual"}
    assert any("moving forward" in p.answer and "turning" in p.answer for p in domain.train)
    assert 90 < domain.duration_s < 100  # the bag's /odom spans 97 s
    shares = domain.robot_shares(2)
    assert sorted(map(id, shares[0] + shares[1])) == sorted(map(id, domain.train))
    latest_0 = max(p.start_s for p in shares[0] if p.start_s is not None)
    earliest_1 = min(p.start_s for p in shares[1] if p.start_s is not None)
    assert latest_0 < earliest_1  # each robot its own part of the run


def test_batches_put_targets_on_the_answer_and_end_token(domain, tokenizer):
    pairs = [domain.train[0], domain.train[-1]]
    batch = make_batch(pairs, tokenizer)
    for row, pair in enumerate(pairs):
        prompt = tokenizer(PROMPT.format(question=pair.question), add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + pair.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        wanted = batch.targets[row][batch.targets[row] != IGNORE].tolist()
        assert wanted == answer
        assert batch.targets[row, len(prompt) - 1].item() == answer[0]
        assert batch.input_ids[row, len(prompt)].item() == answer[0]
    assert batch.answer_tokens == sum(len(tokenizer(" " + p.answer)["input_ids"]) + 1 for p in pairs)


# The ledger


def test_ledger_totals_per_round_kind_and_direction(tmp_path):
    ledger = ByteLedger()
    ledger.record(0, "up", "tb3_0", "edge", "activation", 1000)
    ledger.record(0, "down", "edge", "tb3_0", "gradient", 400)
    ledger.record(1, "up", "tb3_1", "edge", "adapter", 50)
    ledger.record(1, "down", "edge", "tb3_1", "adapter", 50)
    assert ledger.total() == 1500
    assert ledger.per_round() == {0: 1400, 1: 100}
    assert ledger.per_kind() == {"activation": 1000, "adapter": 100, "gradient": 400}
    assert ledger.per_direction() == {"up": 1050, "down": 450}
    with pytest.raises(ValueError, match="direction"):
        ledger.record(0, "sideways", "a", "b", "activation", 1)
    path = tmp_path / "run.json"
    ledger.write_json(path, method="split_lora", cut=4)
    document = json.loads(path.read_text())
    assert document["run"] == {"method": "split_lora", "cut": 4}
    assert document["summary"]["total_bytes"] == 1500 and len(document["messages"]) == 4
    assert document["messages"][1] == {"round": 0, "direction": "down", "sender": "edge", "receiver": "tb3_0",
                                       "kind": "gradient", "bytes": 400}
