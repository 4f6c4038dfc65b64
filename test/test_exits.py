"""Early exits alone (no ROS): the module kind, self-distillation on a tiny model, saving and loading, costs,
placement on the robot, and the exits setup trained for SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch
from test_training_core import tiny_llama

from edge_lam.assets.cache import COMPLETE_MARKER, AssetMissingError
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.costs import exit_unit, llama_exit_unit, module_cost
from edge_lam.model.decompose import build_module, describe
from edge_lam.model.exits import ExitHead, ExitInfo, available_exits, exits_dir, load_exit, save_exit
from edge_lam.placement.assignments import Assignment, shard_groups
from edge_lam.placement.exits import exit_layer_for, with_exit
from edge_lam.training.distill import DistillSettings, calibrate, evaluate_exits, teacher_states, train_exits
from edge_lam.wire.fleet import from_assignment_msg, to_assignment_msg

# The module kind


def test_exit_parses_prints_and_chains_as_a_side_branch():
    spec = ModuleSpec.parse("exit:15")
    assert (spec.kind, spec.layer_start, spec.layer_end, str(spec), spec.module_id) == ("exit", 15, 15, "exit:15",
                                                                                         "exit_15")
    assert spec.is_exit and not spec.in_text_chain and not ModuleSpec.parse("blocks:0:15").is_exit
    assert spec.follows(ModuleSpec.parse("blocks:0:15"))
    assert not spec.follows(ModuleSpec.parse("blocks:0:14")) and not spec.follows(ModuleSpec("embedding"))
    assert ModuleSpec.parse("blocks:15:30").follows(spec) and not ModuleSpec.parse("blocks:14:30").follows(spec)
    assert ModuleSpec("head").follows(ModuleSpec.parse("exit:30"))
    for bad in ("exit:0", "exit:x", "exit:3:4"):
        with pytest.raises(ValueError):
            ModuleSpec.parse(bad)
    with pytest.raises(ValueError, match="exit sits after"):
        ModuleSpec("exit", 3, 5)


def test_exit_assignment_round_trips_through_its_message():
    assignment = Assignment(ModuleSpec.exit_at(12), "robot", "chain/hidden_12", "chain/hidden_12", 10, 0.01)
    assert from_assignment_msg(to_assignment_msg(assignment)) == assignment


# Training on a tiny model


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama()
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(256, (int(n),), generator=generator).tolist()
                 for n in torch.randint(12, 40, (48,), generator=generator)]
    arch = describe(model)
    return arch, teacher_states(arch, sequences[:36], (1, 2, 3)), teacher_states(arch, sequences[36:], (1, 2, 3))


def test_exits_distil_from_the_whole_model_kl_falls_and_agreement_rises(tiny):
    arch, train, heldout = tiny
    exits = [ExitHead(arch, layer, rank=16) for layer in (1, 2, 3)]
    before = evaluate_exits(arch, exits, heldout)
    losses = train_exits(arch, exits, train, DistillSettings(rank=16, steps=60, batch_positions=128, lr=1e-2))
    after = evaluate_exits(arch, exits, heldout)
    assert losses[-1] < 0.7 * losses[0]
    for old, new in zip(before, after, strict=True):
        assert new.kl < old.kl and new.agreement > old.agreement, (old, new)
        assert math.isfinite(new.nll) and 0.0 <= new.confident_share <= 1.0
    assert all(not p.requires_grad for p in exits[0].head.parameters())  # the shared head stayed frozen


def test_an_untrained_exit_is_the_logit_lens_of_the_final_norm_and_head(tiny):
    arch = tiny[0]
    hidden = torch.randn(2, 5, arch.hidden_size)
    lens = arch.model.get_output_embeddings()(getattr(arch.base, arch.final_norm)(hidden))
    assert torch.allclose(ExitHead(arch, 2, rank=4)(hidden), lens)
    with pytest.raises(ValueError):
        ExitHead(arch, 5)


def test_teacher_states_refuse_layers_the_model_lacks(tiny):
    with pytest.raises(ValueError, match="exit layers"):
        teacher_states(tiny[0], [[1, 2, 3]], (4,))


def test_calibration_keeps_the_most_positions_that_agree_often_enough():
    confidence = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    agree = torch.tensor([True, True, True, False, True])
    assert calibrate(confidence, agree, 0.75, min_positions=1) == (0.5, 1.0)  # 4 of 5 agree
    assert calibrate(confidence, agree, 0.95, min_positions=1) == (pytest.approx(0.7), 0.6)
    assert calibrate(confidence, agree, 0.95, min_positions=4) == (math.inf, 0.0)
    entropy = -confidence  # lower is more confident
    assert calibrate(entropy, agree, 0.95, higher_is_confident=False, min_positions=1) == (pytest.approx(-0.7), 0.6)


# Saving and loading


def test_a_saved_exit_loads_with_identical_logits_and_is_found(tiny, tmp_path, monkeypatch):
    arch = tiny[0]
    head = ExitHead(arch, 2, rank=8)
    torch.nn.init.normal_(head.adapter.up.weight, std=0.1)
    info = ExitInfo(model="tiny", layer=2, rank=8, hidden_size=64, vocab_size=256, adapter_bytes=4096,
                    agreement=0.5, nll=3.0, whole_nll=2.0, threshold=0.8, confident_share=0.3,
                    entropy_threshold=1.0, entropy_share=0.2, logit_lens_agreement=0.1,
                    training={"data": "random", "steps": 1})
    save_exit(head, info, tmp_path)
    with pytest.raises(AssetMissingError, match="edge-lam prepare"):
        load_exit(arch, 2, tmp_path)  # not complete yet
    (tmp_path / COMPLETE_MARKER).write_text("")
    assert available_exits("tiny", tmp_path) == {2: info}
    hidden = torch.randn(1, 6, 64)
    assert torch.equal(load_exit(arch, 2, tmp_path)(hidden), head(hidden))
    with pytest.raises(AssetMissingError, match=r"trained: \[2\]"):
        load_exit(arch, 3, tmp_path)
    # build_module finds the exits of a model by the folder it came from, in the cache.
    monkeypatch.setenv("EDGE_LAM_CACHE", str(tmp_path / "cache"))
    arch.model.name_or_path = str(tmp_path / "tiny-model")  # what from_pretrained sets
    folder = exits_dir(arch)
    folder.mkdir(parents=True)
    save_exit(head, info, folder)
    (folder / COMPLETE_MARKER).write_text("")
    assert torch.equal(build_module(arch, ModuleSpec.parse("exit:2"))(hidden), head(hidden))
    with pytest.raises(AssetMissingError):
        build_module(arch, ModuleSpec.parse("exit:1"))


# Costs and placement


def test_exit_costs_its_adapter_and_the_head_matrix_only_where_the_host_lacks_it(tiny):
    arch = tiny[0]
    spec = ModuleSpec.exit_at(2)
    shared = module_cost(arch, spec, exit_rank=8, shares_head=True)
    alone = module_cost(arch, spec, exit_rank=8, shares_head=False)
    assert shared.params == 2 * 64 * 8 + 64  # adapter and final norm
    assert alone.weight_bytes - shared.weight_bytes == 256 * 64 * 4
    assert shared.flops_per_token == alone.flops_per_token == 2 * (2 * 64 * 8 + 256 * 64)
    for shares in (True, False):
        unit = exit_unit(arch.model, 2, rank=8, shares_head=shares)
        sized = llama_exit_unit(2, hidden_size=64, vocab_size=256, rank=8, shares_head=shares)
        assert (unit.weight_bytes, unit.flops_per_token, unit.module) == (sized.weight_bytes, sized.flops_per_token,
                                                                          spec)


def _plan(robot_end: int) -> list[Assignment]:
    return [
        Assignment(ModuleSpec("embedding"), "robot", "chain/input", "chain/hidden_0", 100, 0.0),
        Assignment(ModuleSpec("blocks", 0, robot_end), "robot", "chain/hidden_0", f"chain/hidden_{robot_end}",
                   robot_end * 10, robot_end * 0.001),
        Assignment(ModuleSpec("blocks", robot_end, 30), "edge", f"chain/hidden_{robot_end}", "chain/hidden_30",
                   300, 0.01),
        Assignment(ModuleSpec("head"), "edge", "chain/hidden_30", "chain/output", 100, 0.01),
    ]


def test_placement_puts_the_deepest_trained_exit_the_robots_blocks_reach():
    trained = (8, 12, 15, 20)
    price = lambda layer: llama_exit_unit(layer, hidden_size=576, vocab_size=49152)  # noqa: E731
    assert exit_layer_for(_plan(18), trained) == 15 and exit_layer_for(_plan(7), trained) is None

    placed = with_exit(_plan(18), trained, price, host_gflops=10.0)
    assert [str(a.module) for a in placed] == ["embedding", "blocks:0:15", "exit:15", "blocks:15:18", "blocks:18:30",
                                               "head"]
    (robot,) = shard_groups(placed, "robot")
    assert robot.module_ids == ("embedding", "blocks_0_15", "exit_15", "blocks_15_18")
    exit_assignment = placed[2]
    assert exit_assignment.memory_bytes == (2 * 576 * 64 + 576) * 4  # the robot holds the tied embedding
    assert exit_assignment.expected_latency_s == pytest.approx(price(15).flops_per_token / 10e9)
    assert sum(a.memory_bytes for a in placed[1:4:2]) == 180  # the split range keeps its memory

    at_cut = with_exit(_plan(12), trained, price, host_gflops=10.0)
    assert [str(m) for m in shard_groups(at_cut, "robot")[0].modules] == ["embedding", "blocks:0:12",
                                                                                   "exit:12"]
    assert with_exit(_plan(7), trained, price, host_gflops=10.0) == _plan(7)


# The exits setup trained for SmolLM2


def test_smollm2_exits_are_prepared_with_sane_figures():
    found = available_exits("smollm2-135m-instruct")
    assert len(found) >= 3, "run `edge-lam prepare` to train the exits"
    for layer, info in found.items():
        assert info.layer == layer and info.model == "smollm2-135m-instruct"
        assert 0.0 <= info.agreement <= 1.0 and 0.0 <= info.confident_share <= 1.0
        assert math.isfinite(info.nll) and math.isfinite(info.whole_nll) and info.nll > info.whole_nll
        assert info.agreement > info.logit_lens_agreement  # training paid
    # Deeper exits see more of the model: the deepest has the lowest NLL (smoother than top-1 agreement, whose
    # order between neighbouring layers the ~2k held-out positions do not settle) and beats the shallowest.
    deepest, shallowest = found[max(found)], found[min(found)]
    assert deepest.nll == min(i.nll for i in found.values())
    assert deepest.agreement > shallowest.agreement
