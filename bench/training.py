"""Collaborative fine-tuning of SmolLM2 on the domain set: bytes on the wire and held-out quality, ours against
full-parameter federated learning and plain split learning.

Robots train on their own part of the domain set (the real TurtleBot run's odometry, by time range, and the
maintenance manual) and an edge helps; every method sees the same batches in the same order, from the same seed,
for the same rounds and steps, from the same pretrained model:

- ``full_fl``: full-parameter federated learning. Each robot trains the whole model locally; each round it
  uploads all its weights and downloads the sample-weighted average (FedAvg).
- ``split_fp32``: plain split learning (SplitFed). Each robot trains layers [0, cut), the edge trains the rest
  and computes the loss; fp32 activations go up and fp32 gradients come down each step, and each round the
  robots' layers are averaged at the edge and sent back.
- ``split_lora_fp32``: the same with LoRA adapters on frozen halves, still fp32 on the wire: an ablation that
  separates what LoRA saves from what compression saves.
- ``ours``: split LoRA with compressed activations and gradients (codecs of ``edge_lam.training.compression``:
  int8 per channel up, top-10% down by default) and the robots' adapters sent as fp16 and averaged each round.
  No error feedback: every step's activations and gradients belong to another batch, so a residual carried over
  would add one batch's error to another's; the adapters go whole each round (a late joiner needs no history).

LoRA (rank 8, alpha 16) adapts every linear layer of a block by default: on q and v alone it trailed full-weight
split learning by far in this few steps (held-out loss 2.17 against 1.37 at lr 1e-3; 1.42 at lr 5e-3).

The edge trains one top for all robots (the robots take turns), embedding and head stay frozen in split methods
(they are one tied matrix in SmolLM2). Bytes are the serialized size of each message as a TensorList (CDR, names,
dtypes and shapes included; see ``wire_bytes``): a step's up message carries the activation and the answer
targets (int32), its down message the gradient; a round's messages carry the trained weights up and the averaged
weights down, per robot. Robots start from the same adapter (same seed) so round 0 sends no initial state. The
held-out metric is the mean negative log-likelihood of the held-out answers' tokens (with perplexity and exact
answers, i.e. greedy decoding reproducing the whole answer), computed in fp32 with the final averaged weights.
Everything runs in this process, one torch thread; wall times are compute (and encoding), no network.

    python bench/training.py [--robots 2] [--rounds 3] [--steps 4] [--batch 8] [--cut 4] [--up int8]
                             [--down topk:0.1] [--adapter-codec fp16] [--json PATH] [--ledger-dir DIR]

About 7 minutes on 2 shared vCPUs with the defaults (fewer --steps or a smaller --batch shorten it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edge_lam.assets import evo_bags_dir
from edge_lam.model.decompose import BlockRange, Embedding, Head, describe
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.training.adapters import FederatedAdapters, LoraSettings, fedavg
from edge_lam.training.compression import Codec, codec_from_spec, wire_bytes
from edge_lam.training.domain_data import Batch, batch_stream, build_domain_set, make_batch
from edge_lam.training.ledger import ByteLedger
from edge_lam.training.split import AnswerScores, SplitBottom, SplitTop, answer_loss, answer_scores, positions_for

MODEL = "smollm2-135m-instruct"
BAG = "nav2_turtlebot.mcap"
EDGE = "edge"
# LoRA on every linear layer of a block: on attention alone (q, v) it trails full fine-tuning by far in so few steps.
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclasses.dataclass(frozen=True)
class Method:
    """What a method trains and how its tensors travel (codec specs)."""

    kind: str  # "full_fl" or "split"
    lora: bool
    up: str
    down: str
    weights: str
    lr: float


@dataclasses.dataclass
class Run:
    """One method's outcome."""

    ledger: ByteLedger
    before: AnswerScores
    after: AnswerScores
    train_s: float
    step_s: list[float]
    losses: list[float]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def send_state(state: dict[str, torch.Tensor], codec: Codec) -> tuple[int, dict[str, torch.Tensor]]:
    """One message of named weights: its bytes on the wire, and the weights as the receiver decodes them."""
    encoded = {name: codec.encode(tensor) for name, tensor in state.items()}
    named = {key: array for name, e in encoded.items() for key, array in e.wire(name).items()}
    return wire_bytes(named), {name: codec.decode(e) for name, e in encoded.items()}


def heldout_scores(run_batch: Callable[[Batch], AnswerScores], batches: list[Batch]) -> AnswerScores:
    with torch.no_grad():
        return sum((run_batch(batch) for batch in batches), AnswerScores())


def average_round(rounds: FederatedAdapters, codec: Codec, ledger: ByteLedger, round_: int,
                  robots: list[str]) -> dict[str, torch.Tensor]:
    """Close the round at the edge and send the merged weights to every robot; what the robots decode."""
    rounds.finish_round()
    nbytes, received = send_state(rounds.state, codec)
    for robot in robots:
        ledger.record(round_, "down", EDGE, robot, "weights", nbytes)
    return received


def run_split(method: Method, model: nn.Module, schedule: list[list[list[Batch]]], heldout: list[Batch],
              counts: list[int], cut: int, lora: LoraSettings, seed: int) -> Run:
    """Split learning over the schedule ([robot][round][step] batches), robots taking turns with one edge."""
    arch = describe(model)
    settings = lora if method.lora else None
    bottoms = [SplitBottom(arch, cut, settings, lr=method.lr, seed=seed) for _ in schedule]
    top = SplitTop(arch, cut, settings, lr=method.lr, seed=seed + 1)
    up, down, weights = (codec_from_spec(s) for s in (method.up, method.down, method.weights))
    names = [f"robot_{r}" for r in range(len(schedule))]
    rounds = FederatedAdapters(bottoms[0].trainable_state())

    def evaluate(batch: Batch) -> AnswerScores:
        return top.evaluate(bottoms[0].forward(batch.input_ids), batch.targets)

    before = heldout_scores(evaluate, heldout)
    ledger, step_s, losses = ByteLedger(), [], []
    started = time.perf_counter()
    for round_ in range(len(schedule[0])):
        for r, (bottom, name) in enumerate(zip(bottoms, names, strict=True)):
            for batch in schedule[r][round_]:
                t0 = time.perf_counter()
                activation = up.encode(bottom.forward(batch.input_ids))
                targets = batch.targets.to(torch.int32).numpy()
                ledger.record(round_, "up", name, EDGE, "activation",
                              wire_bytes({**activation.wire("activation"), "targets": targets}))
                loss, grad = top.step(up.decode(activation), batch.targets)
                gradient = down.encode(grad)
                ledger.record(round_, "down", EDGE, name, "gradient", wire_bytes(gradient.wire("gradient")))
                bottom.backward(down.decode(gradient))
                step_s.append(time.perf_counter() - t0)
                losses.append(loss)
            nbytes, received = send_state(bottom.trainable_state(), weights)
            ledger.record(round_, "up", name, EDGE, "weights", nbytes)
            rounds.contribute(name, received, counts[r])
        merged = average_round(rounds, weights, ledger, round_, names)
        for bottom in bottoms:
            bottom.load_trainable_state(merged)
    train_s = time.perf_counter() - started
    return Run(ledger, before, heldout_scores(evaluate, heldout), train_s, step_s, losses)


class WholeModel(nn.Module):
    """A robot's whole model for full-parameter FL: every weight trains, the tied embedding and head included."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        arch = describe(model)
        self.embedding, self.head = Embedding(arch), Head(arch)
        self.blocks = BlockRange(arch, 0, arch.num_layers)
        self.requires_grad_(True)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = positions_for(input_ids)
        return self.blocks(self.embedding(input_ids, positions), positions, self.blocks.new_cache())

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight once (the tied embedding/head matrix once): what a robot uploads."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(state[name])


def run_full_fl(method: Method, model: nn.Module, schedule: list[list[list[Batch]]], heldout: list[Batch],
                counts: list[int]) -> Run:
    """Full-parameter FedAvg: one working copy of the model, loaded with the global weights for each robot's turn."""
    whole = WholeModel(model)
    codec = codec_from_spec(method.weights)
    names = [f"robot_{r}" for r in range(len(schedule))]
    global_state = {name: t.clone() for name, t in whole.state().items()}

    def evaluate(batch: Batch) -> AnswerScores:
        return answer_scores(whole.head, whole.hidden(batch.input_ids), batch.targets)

    before = heldout_scores(evaluate, heldout)
    ledger, step_s, losses = ByteLedger(), [], []
    started = time.perf_counter()
    for round_ in range(len(schedule[0])):
        states = []
        for r, name in enumerate(names):
            whole.load(global_state)
            optimizer = torch.optim.AdamW(whole.parameters(), lr=method.lr, weight_decay=0.0)
            for batch in schedule[r][round_]:
                t0 = time.perf_counter()
                loss = answer_loss(whole.head, whole.hidden(batch.input_ids), batch.targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_s.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
            del optimizer
            nbytes, received = send_state(whole.state(), codec)
            ledger.record(round_, "up", name, EDGE, "weights", nbytes)
            states.append(received)
        global_state = fedavg(states, counts)
        del states
        nbytes, global_state = send_state(global_state, codec)
        for name in names:
            ledger.record(round_, "down", EDGE, name, "weights", nbytes)
    whole.load(global_state)
    train_s = time.perf_counter() - started
    return Run(ledger, before, heldout_scores(evaluate, heldout), train_s, step_s, losses)


def human(nbytes: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes:.0f} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=2, help="robots (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per robot per round (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="question/answer pairs per step (default 8)")
    parser.add_argument("--cut", type=int, default=4, help="the robot holds layers [0, cut) (default 4)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--targets", default=ALL_LINEAR, help=f"LoRA target modules (default {ALL_LINEAR})")
    parser.add_argument("--up", default="int8", help="ours: activation codec (default int8)")
    parser.add_argument("--down", default="topk:0.1", help="ours: gradient codec (default topk:0.1)")
    parser.add_argument("--adapter-codec", default="fp16", help="ours: adapter codec (default fp16)")
    parser.add_argument("--lr-full", type=float, default=5e-5, help="AdamW lr, full-weight methods (default 5e-5)")
    parser.add_argument("--lr-lora", type=float, default=2e-3, help="AdamW lr, LoRA methods (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="full_fl,split_fp32,split_lora_fp32,ours", help="methods to run")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--ledger-dir", type=pathlib.Path, help="write each method's byte ledger here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)

    methods = {
        "full_fl": Method("full_fl", False, "fp32", "fp32", "fp32", args.lr_full),
        "split_fp32": Method("split", False, "fp32", "fp32", "fp32", args.lr_full),
        "split_lora_fp32": Method("split", True, "fp32", "fp32", "fp32", args.lr_lora),
        "ours": Method("split", True, args.up, args.down, args.adapter_codec, args.lr_lora),
    }
    chosen = args.methods.split(",")
    lora = LoraSettings(rank=args.rank, alpha=2.0 * args.rank, target_modules=tuple(args.targets.split(",")))
    tokenizer = load_tokenizer(MODEL)
    domain = build_domain_set(evo_bags_dir() / BAG)
    shares = domain.robot_shares(args.robots)
    streams = [batch_stream(share, args.batch, args.seed + r) for r, share in enumerate(shares)]
    schedule = [[[make_batch(next(stream), tokenizer) for _ in range(args.steps)] for _ in range(args.rounds)]
                for stream in streams]
    heldout = [make_batch(domain.heldout[i:i + args.batch], tokenizer)
               for i in range(0, len(domain.heldout), args.batch)]
    counts = [len(share) for share in shares]

    runs: dict[str, Run] = {}
    for name in chosen:
        torch.manual_seed(args.seed)
        model = load_model(MODEL)
        if methods[name].kind == "full_fl":
            runs[name] = run_full_fl(methods[name], model, schedule, heldout, counts)
        else:
            runs[name] = run_split(methods[name], model, schedule, heldout, counts, args.cut, lora, args.seed)
        del model
        if args.ledger_dir:
            args.ledger_dir.mkdir(parents=True, exist_ok=True)
            runs[name].ledger.write_json(args.ledger_dir / f"training_{name}.json", method=name,
                                         **dataclasses.asdict(methods[name]), robots=args.robots, rounds=args.rounds,
                                         steps=args.steps, batch=args.batch, cut=args.cut, seed=args.seed)
        print(f"  {name}: {runs[name].train_s:.0f} s", file=sys.stderr, flush=True)

    rows = {}
    for name, run in runs.items():
        ledger, kinds = run.ledger, run.ledger.per_kind()
        rows[name] = {
            "codecs": {"up": methods[name].up, "down": methods[name].down, "weights": methods[name].weights},
            "lr": methods[name].lr, "total_bytes": ledger.total(),
            "bytes_per_round": list(ledger.per_round().values()),
            "bytes_per_round_mean": ledger.total() / args.rounds,
            "activation_gradient_bytes": kinds.get("activation", 0) + kinds.get("gradient", 0),
            "weights_bytes": kinds.get("weights", 0), "messages": len(ledger.messages),
            "heldout_loss_before": run.before.loss, "heldout_loss_after": run.after.loss,
            "heldout_perplexity_before": run.before.perplexity, "heldout_perplexity_after": run.after.perplexity,
            "heldout_exact_before": run.before.exact_match, "heldout_exact_after": run.after.exact_match,
            "train_loss_first_round": float(np.mean(run.losses[:args.steps * args.robots])),
            "train_loss_last_round": float(np.mean(run.losses[-args.steps * args.robots:])),
            "wall_s": run.train_s, "step_p50_s": statistics.median(run.step_s), "step_p99_s": p99(run.step_s),
        }

    heldout_tokens = sum(b.answer_tokens for b in heldout)
    print(f"SmolLM2-135M-Instruct on the domain set ({len(domain.train)} training pairs over {args.robots} robots, "
          f"{len(domain.heldout)} held-out pairs / {heldout_tokens} answer tokens): {args.rounds} rounds x "
          f"{args.steps} steps x batch {args.batch} per robot, cut after layer {args.cut}, LoRA rank {lora.rank} "
          f"on {','.join(lora.target_modules)}, seed {args.seed}, 1 torch thread")
    print(f"{'method':<16} | {'codecs up/down/weights':<22} | {'bytes/round':>11} | {'total':>10} | "
          f"{'act+grad':>10} | {'weights':>10} | {'held-out loss':>15} | {'perplexity':>15} | {'exact':>11} | "
          f"{'wall s':>6} | {'step p50/p99 s':>14}")
    for name, row in rows.items():
        codecs = "/".join(row["codecs"].values())
        print(f"{name:<16} | {codecs:<22} | {human(row['bytes_per_round_mean']):>11} | "
              f"{human(row['total_bytes']):>10} | {human(row['activation_gradient_bytes']):>10} | "
              f"{human(row['weights_bytes']):>10} | "
              f"{row['heldout_loss_before']:6.3f} -> {row['heldout_loss_after']:5.3f} | "
              f"{row['heldout_perplexity_before']:6.1f} -> {row['heldout_perplexity_after']:5.2f} | "
              f"{row['heldout_exact_before']:4.2f} -> {row['heldout_exact_after']:4.2f} | {row['wall_s']:6.0f} | "
              f"{row['step_p50_s']:6.2f} /{row['step_p99_s']:6.2f}")
    print(f"{'bytes per round':<16} | " + " | ".join(f"{n:>15}" for n in rows))
    for round_ in range(args.rounds):
        print(f"{f'round {round_}':<16} | " + " | ".join(f"{human(r['bytes_per_round'][round_]):>15}"
                                                        for r in rows.values()))

    figures: dict[str, object] = {"config": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                                             for k, v in vars(args).items()}, "methods": rows}
    if "ours" in rows:
        ours = rows["ours"]
        goals = []
        for base, key, limit in (("full_fl", "bytes_ratio_vs_full_fl", 0.01),
                                 ("split_fp32", "bytes_ratio_vs_split_fp32", 0.25),
                                 ("split_lora_fp32", "bytes_ratio_vs_split_lora_fp32", None)):
            if base in rows:
                figures[key] = ours["total_bytes"] / rows[base]["total_bytes"]
                goals.append(f"{key} = {figures[key]:.4f}" + (
                    f" (goal <= {limit}: {'met' if figures[key] <= limit else 'MISSED'})" if limit else ""))
        if "split_fp32" in rows:
            base = rows["split_fp32"]
            figures["act_grad_bytes_ratio_vs_split_fp32"] = (ours["activation_gradient_bytes"]
                                                             / base["activation_gradient_bytes"])
            figures["metric_delta_vs_split_fp32"] = (ours["heldout_loss_after"] - base["heldout_loss_after"]) \
                / base["heldout_loss_after"]
            figures["perplexity_delta_vs_split_fp32"] = (ours["heldout_perplexity_after"]
                                                         - base["heldout_perplexity_after"]) \
                / base["heldout_perplexity_after"]
            delta = figures["metric_delta_vs_split_fp32"]
            goals.append(f"act_grad_bytes_ratio_vs_split_fp32 = {figures['act_grad_bytes_ratio_vs_split_fp32']:.4f}")
            goals.append(f"metric_delta_vs_split_fp32 = {delta:+.4f} (held-out loss, relative; goal within 2%: "
                         f"{'met' if delta <= 0.02 else 'MISSED'}); perplexity "
                         f"{figures['perplexity_delta_vs_split_fp32']:+.4f}")
        if "split_lora_fp32" in rows:
            figures["metric_delta_vs_split_lora_fp32"] = (
                ours["heldout_loss_after"] - rows["split_lora_fp32"]["heldout_loss_after"]
            ) / rows["split_lora_fp32"]["heldout_loss_after"]
            goals.append(f"metric_delta_vs_split_lora_fp32 = {figures['metric_delta_vs_split_lora_fp32']:+.4f}")
        for line in goals:
            print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
