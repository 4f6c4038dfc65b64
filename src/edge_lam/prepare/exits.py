"""Setup's exit step: SmolLM2's early exits distilled from the whole model on the fleet's text, measured, saved.

Bounded so that setup stays short on a 2-core machine: a few dozen report prompts with their greedy answers and the
domain set (about 7k training positions), one teacher pass, a fixed number of steps over a candidate vocabulary.
"""

from __future__ import annotations

import math
import os
import pathlib
import time

from edge_lam.assets.cache import EXIT_MODEL

EXIT_LAYERS = (8, 12, 15, 20)  # of SmolLM2's 30: a robot holding a quarter to two thirds of the blocks finds one
TARGET_AGREEMENT = 0.95
LENS_POSITIONS = 512


def build_exits(out: pathlib.Path) -> str:
    """Train, measure and save the exits into ``out``; print each phase and the per-layer table."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from edge_lam.assets.cache import camera_bag_dir, evo_bags_dir
    from edge_lam.model.decompose import describe
    from edge_lam.model.exits import ExitHead, ExitInfo, exit_table, save_exit
    from edge_lam.model.loading import load_model, load_tokenizer
    from edge_lam.training.distill import DistillSettings, evaluate_exits, teacher_states, train_exits
    from edge_lam.training.fleet_text import build_fleet_text

    start = time.monotonic()

    def say(what: str) -> None:
        print(f"    exits: {what} ({time.monotonic() - start:.0f} s)", flush=True)

    torch.manual_seed(0)
    model, tokenizer = load_model(EXIT_MODEL), load_tokenizer(EXIT_MODEL)
    arch = describe(model)
    text = build_fleet_text(model, tokenizer, camera_bag_dir(), evo_bags_dir())
    say(f"fleet text: {len(text.train)} training and {len(text.heldout)} held-out sequences")
    train_states = teacher_states(arch, text.train, EXIT_LAYERS)
    heldout_states = teacher_states(arch, text.heldout, EXIT_LAYERS)
    say(f"teacher pass: {train_states.positions} training and {heldout_states.positions} held-out positions")
    settings = DistillSettings()
    exits = [ExitHead(arch, layer, settings.rank) for layer in EXIT_LAYERS]
    # What training buys: the untrained exits (the logit lens), on a part of the held-out text to keep setup short.
    lens = {s.layer: s for s in evaluate_exits(arch, exits, heldout_states.first(LENS_POSITIONS), TARGET_AGREEMENT)}
    losses = train_exits(arch, exits, train_states, settings,
                         progress=lambda step, kl: say(f"step {step}/{settings.steps}, summed KL {kl:.3f}")
                         if step % 50 == 0 else None)
    scores = evaluate_exits(arch, exits, heldout_states, TARGET_AGREEMENT)
    say("held-out figures measured")
    whole_nll = float(heldout_states.nll.mean())
    infos = {}
    for head, score in zip(exits, scores, strict=True):
        info = ExitInfo(
            model=EXIT_MODEL, layer=head.layer, rank=head.rank, hidden_size=arch.hidden_size,
            vocab_size=arch.model.get_output_embeddings().out_features,
            adapter_bytes=sum(t.numel() * t.element_size() for t in head.adapter_state().values()),
            agreement=score.agreement, nll=score.nll, whole_nll=whole_nll, target_agreement=TARGET_AGREEMENT,
            threshold=score.threshold, confident_share=score.confident_share,
            entropy_threshold=score.entropy_threshold, entropy_share=score.entropy_share,
            logit_lens_agreement=lens[head.layer].agreement,
            training={"data": text.description, "steps": settings.steps, "batch_positions": settings.batch_positions,
                      "lr": settings.lr, "temperature": settings.temperature,
                      "training_positions": train_states.positions, "heldout_positions": heldout_states.positions,
                      "logit_lens_positions": min(LENS_POSITIONS, heldout_states.positions),
                      "first_kl": losses[0], "last_kl": losses[-1], "heldout_kl": score.kl},
        )
        if not (math.isfinite(info.nll) and 0.0 <= info.agreement <= 1.0):
            raise RuntimeError(f"exit {head.layer} came out broken: agreement {info.agreement}, NLL {info.nll}")
        save_exit(head, info, out)
        infos[head.layer] = info
    print(exit_table(infos), flush=True)
    best = max(infos.values(), key=lambda i: i.layer)
    return (f"exits at layers {list(EXIT_LAYERS)}, rank {settings.rank}; deepest agrees {best.agreement:.2f} "
            f"with the whole model, {time.monotonic() - start:.0f} s")
