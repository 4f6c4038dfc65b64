"""The edge LAM in the air interface: channel prediction and beam selection against the classical methods.

Every predictor reads 16 past CSI estimates of a 16-antenna base station's downlink to one user (32 subcarriers,
0.5 ms apart, estimates at ``--snr-db`` dB) and predicts the true channel of the next 4 slots; all are trained
on the same CDL-C training windows, chosen on the same validation windows, scored on the same test windows (CDL-C)
and, zero-shot, on a profile none of them saw (CDL-A). In the same run:

- ``last``: no prediction (the newest estimate, as a base station that uses its last report as is);
- ``ar``: a linear (AR / Wiener) predictor per antenna and subcarrier, order and regularisation chosen on val;
- ``gru``: a small GRU over the slots, trained on the same windows;
- ``lam``: SmolLM2's lower decoder layers (frozen, LoRA and norms trained) between a CSI patch embedding and a
  prediction head (``edge_lam.air.lam``, its default: the slots in the angle-delay domain, the head choosing a
  denoising gain per bin and how to mix a per-beam and a pooled AR fit of the window);
- ``lam_alone``: the same layers reading the raw slots, the head a correction filter over the newest estimate: what
  the language model's layers learn with no signal processing given to them.

Beams: the best beam of a 2x oversampled DFT codebook (32 beams) for each prediction, against the best beam of
the true future channel (the upper bound); ``last beam`` is the best beam of the newest estimate. Spectral
efficiency loss is the upper bound's mean log2(1 + SNR gain) minus the chosen beam's, at ``--link-snr-db``.
Latency: one window at a time (batch 1), as the ``channel_predictor`` node serves them.

    python bench/air_interface.py [--json PATH] [--plot PATH] [--large | --set FOLDER] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import sys
import time

import numpy as np
import torch

from edge_lam.air import baselines, lam
from edge_lam.air.beams import best_beams, dft_codebook, spectral_efficiency, top_k_hit
from edge_lam.air.channels import ChannelSettings, Windows, estimate, generate_set, load_split, windows
from edge_lam.air.predictors import LastCsi, nmse
from edge_lam.assets.cache import air_channels_dir, asset_dir

SPEED_EDGES = (10.0, 32.0, 54.0, 76.0, 98.0, 120.0)  # km/h: five bins for the plot and the table
EVAL_SPLITS = ("test", "zero_shot")
LARGE_FACTOR = 4  # --large: this many times the prepared set's draws


@dataclasses.dataclass
class Split:
    """One split's windows: noisy estimates in, the true future to score against."""

    name: str
    windows: Windows
    estimates: np.ndarray


def read_splits(folder: pathlib.Path, snr_db: float) -> dict[str, Split]:
    splits = {}
    for index, name in enumerate(("train", "val", *EVAL_SPLITS)):
        cut = windows(load_split(folder, name))
        splits[name] = Split(name, cut, estimate(cut.past, snr_db, seed=index))
    return splits


def large_set() -> pathlib.Path:
    """A set ``LARGE_FACTOR`` times the prepared one, made once into the cache (same recipe, other seed)."""
    base = ChannelSettings()
    settings = dataclasses.replace(base, draws={k: v * LARGE_FACTOR for k, v in base.draws.items()},
                                   seed=base.seed + 1)
    folder = asset_dir("data", f"air-channels-large-x{LARGE_FACTOR}")
    if not (folder / "settings.json").is_file():
        print(f"making the large set in {folder} ...", flush=True)
        print(generate_set(folder, settings, progress=lambda line: print(f"    {line}", flush=True)), flush=True)
    return folder


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def latency_ms(predictor, split: Split, count: int) -> dict:
    """Per window, one at a time, after 5 warm-up windows."""
    times = []
    for i in range(count + 5):
        window = split.estimates[i % len(split.estimates)][None]
        start = time.perf_counter()
        predictor.predict(window)
        if i >= 5:
            times.append((time.perf_counter() - start) * 1e3)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def predict_all(predictor, split: Split, batch: int = 256) -> np.ndarray:
    return np.concatenate([predictor.predict(split.estimates[i:i + batch])
                           for i in range(0, len(split.estimates), batch)])


def nmse_by_speed(per_window: np.ndarray, speeds: np.ndarray) -> dict:
    """NMSE (dB) over all windows and per speed bin."""
    out = {"all": float(10 * np.log10(per_window.mean()))}
    for low, high in itertools.pairwise(SPEED_EDGES):
        mask = (speeds >= low) & (speeds < high if high < SPEED_EDGES[-1] else speeds <= high)
        out[f"{low:.0f}-{high:.0f}"] = float(10 * np.log10(per_window[mask].mean())) if mask.any() else float("nan")
    return out


def beam_scores(chosen: np.ndarray, split: Split, codebook: np.ndarray, link_snr_db: float) -> dict:
    """Top-1 / top-3 accuracy of ranked beams ``chosen`` [n, 3] and the spectral-efficiency loss (bit/s/Hz)."""
    future = split.windows.future
    best = best_beams(future, codebook, k=1)[:, 0]
    upper = spectral_efficiency(future, best, codebook, link_snr_db)
    achieved = spectral_efficiency(future, chosen[:, 0], codebook, link_snr_db)
    return {"top1": float(top_k_hit(chosen[:, :1], best).mean()), "top3": float(top_k_hit(chosen, best).mean()),
            "se_loss_bps_hz": float(np.mean(upper - achieved)), "se_upper_bps_hz": float(np.mean(upper))}


def train_all(splits: dict[str, Split], args: argparse.Namespace) -> dict[str, dict]:
    """Fit or train every predictor on the same windows; each with its training seconds and trainable parameters."""
    train, val = splits["train"], splits["val"]
    trained = {"last": {"predictor": LastCsi(), "train_s": 0.0, "trainable": 0}}
    for name, fit in (("ar", fit_ar), ("gru", train_gru), ("lam", train_lam), ("lam_alone", train_lam_alone)):
        if name not in args.methods:
            continue
        print(f"training {name} ...", flush=True)
        start = time.perf_counter()
        predictor, report = fit(train, val, args)
        seconds = time.perf_counter() - start
        trained[name] = {"predictor": predictor, "train_s": seconds, "report": report,
                         "trainable": int(report.get("trainable_parameters", 0))}
        brief = {k: v for k, v in report.items() if k not in ("history", "losses", "settings")}
        print(f"  {name}: {seconds:.0f} s, {brief}", flush=True)
        if args.save_dir is not None:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            predictor.save(args.save_dir / f"{name}.safetensors")
    return trained


def fit_ar(train: Split, val: Split, args: argparse.Namespace):
    log: list[dict] = []
    predictor = baselines.fit_ar(train.windows, val.windows, snr_db=args.snr_db, log=log)
    chosen = dataclasses.asdict(predictor.settings)
    return predictor, {"trainable_parameters": int(predictor.coefficients.size * 2), "chosen": chosen,
                       "val_nmse_db": min(c["val_nmse_db"] for c in log), "candidates": len(log)}


def train_gru(train: Split, val: Split, args: argparse.Namespace):
    predictor, report = baselines.train_gru(train.windows, val.windows,
                                            dataclasses.replace(default_gru(train), snr_db=args.snr_db))
    return predictor, {**report, "trainable_parameters": report["parameters"]}


def default_gru(train: Split) -> baselines.GruSettings:
    past, future = train.windows.past, train.windows.future
    return baselines.GruSettings(antennas=past.shape[2], subcarriers=past.shape[3], past=past.shape[1],
                                 future=future.shape[1])


def train_lam(train: Split, val: Split, args: argparse.Namespace, **changes):
    settings = dataclasses.replace(lam.LamSettings(), snr_db=args.snr_db, **changes)
    if args.lam_steps is not None:
        settings = dataclasses.replace(settings, steps=args.lam_steps)
    return lam.train_lam(train.windows, val.windows, settings)


def train_lam_alone(train: Split, val: Split, args: argparse.Namespace):
    return train_lam(train, val, args, head="filter", base="last", lr=1e-3, steps=300)


def evaluate(trained: dict[str, dict], splits: dict[str, Split], args: argparse.Namespace) -> dict:
    codebook = dft_codebook(splits["train"].windows.past.shape[2], oversample=2)
    results: dict = {"methods": {}, "beams": {}}
    for name, entry in trained.items():
        row: dict = {"train_s": entry["train_s"], "trainable_parameters": entry["trainable"]}
        for split_name in EVAL_SPLITS:
            split = splits[split_name]
            predicted = predict_all(entry["predictor"], split)
            row[f"nmse_db_{split_name}"] = nmse_by_speed(nmse(predicted, split.windows.future),
                                                         split.windows.speed_kmh)
            row[f"beams_{split_name}"] = beam_scores(best_beams(predicted, codebook, k=3), split, codebook,
                                                     args.link_snr_db)
        row["latency_ms"] = latency_ms(entry["predictor"], splits["test"], args.latency_windows)
        results["methods"][name] = row
    for split_name in EVAL_SPLITS:  # the beam of the newest estimate, and the true future's (upper bound)
        split = splits[split_name]
        newest = best_beams(split.estimates[:, -1:], codebook, k=3)
        true = best_beams(split.windows.future, codebook, k=3)
        results["beams"][split_name] = {"last beam": beam_scores(newest, split, codebook, args.link_snr_db),
                                        "true future (upper bound)": beam_scores(true, split, codebook,
                                                                                 args.link_snr_db)}
    return results


def figures(results: dict) -> dict:
    methods = results["methods"]
    baselines_ = [m for m in methods if not m.startswith("lam")]
    best = min(baselines_, key=lambda m: methods[m]["nmse_db_test"]["all"])
    beam_rows = {m: methods[m]["beams_test"]["top1"] for m in baselines_}
    beam_rows["last beam"] = results["beams"]["test"]["last beam"]["top1"]
    best_beam = max(beam_rows, key=beam_rows.get)
    out = {"best_baseline": best, "best_baseline_nmse_db": methods[best]["nmse_db_test"]["all"],
           "beam_best_baseline": best_beam, "beam_top1_best_baseline": beam_rows[best_beam]}
    if "lam" in methods:
        out.update(lam_nmse_db=methods["lam"]["nmse_db_test"]["all"],
                   lam_minus_best_baseline_db=methods["lam"]["nmse_db_test"]["all"] - out["best_baseline_nmse_db"],
                   beam_top1_lam=methods["lam"]["beams_test"]["top1"],
                   zero_shot_nmse_db=methods["lam"]["nmse_db_zero_shot"]["all"],
                   zero_shot_best_baseline_nmse_db=min(methods[m]["nmse_db_zero_shot"]["all"] for m in baselines_))
    if "lam_alone" in methods:
        out["lam_alone_nmse_db"] = methods["lam_alone"]["nmse_db_test"]["all"]
    return out


def print_tables(results: dict, summary: dict, args: argparse.Namespace) -> None:
    methods = results["methods"]
    bins = [f"{a:.0f}-{b:.0f}" for a, b in itertools.pairwise(SPEED_EDGES)]
    for split_name, title in (("test", "test, CDL-C (the training profile)"),
                              ("zero_shot", "zero-shot, CDL-A (never trained on)")):
        print(f"\nNMSE dB of the next 4 slots, {title}; estimates at {args.snr_db:g} dB SNR (lower is better)")
        print(f"{'method':<9} | {'all':>6} | " + " | ".join(f"{b:>6}" for b in bins) + " km/h")
        for name, row in methods.items():
            values = row[f"nmse_db_{split_name}"]
            print(f"{name:<9} | {values['all']:>6.2f} | " + " | ".join(f"{values[b]:>6.2f}" for b in bins))
    for split_name in EVAL_SPLITS:
        print(f"\nbeams ({split_name}): best of a 32-beam DFT codebook for the next 4 slots; "
              f"SE at {args.link_snr_db:g} dB")
        print(f"{'method':<26} | top-1 | top-3 | SE loss bit/s/Hz")
        rows = {name: row[f"beams_{split_name}"] for name, row in methods.items() if name != "last"}
        rows = {"last beam": results["beams"][split_name]["last beam"], **rows,
                "true future (upper bound)": results["beams"][split_name]["true future (upper bound)"]}
        for name, row in rows.items():
            print(f"{name:<26} | {row['top1']:.3f} | {row['top3']:.3f} | {row['se_loss_bps_hz']:.3f}")
    print(f"\n{'method':<9} | trainable params | train s | predict ms p50 | p99 (one window, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''})")
    for name, row in methods.items():
        print(f"{name:<9} | {row['trainable_parameters']:>16,} | {row['train_s']:>7.0f} | "
              f"{row['latency_ms']['p50']:>14.2f} | {row['latency_ms']['p99']:.2f}")
    print("\n" + " | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(a + b) / 2 for a, b in itertools.pairwise(SPEED_EDGES)]
    bins = [f"{a:.0f}-{b:.0f}" for a, b in itertools.pairwise(SPEED_EDGES)]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (split_name, title) in zip(axes, (("test", "test (CDL-C)"), ("zero_shot", "zero-shot (CDL-A)")),
                                         strict=True):
        for name, row in results["methods"].items():
            axis.plot(centres, [row[f"nmse_db_{split_name}"][b] for b in bins], marker="o", label=name)
        axis.set_title(title)
        axis.set_xlabel("user speed, km/h")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("NMSE of the next 4 slots, dB")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    parser.add_argument("--plot", type=pathlib.Path, default=pathlib.Path("air_interface_nmse.png"),
                        help="PNG of NMSE against speed for every method (default %(default)s)")
    parser.add_argument("--large", action="store_true",
                        help=f"a set {LARGE_FACTOR}x the prepared one (made into the cache on first use)")
    parser.add_argument("--set", type=pathlib.Path, dest="channel_set",
                        help="your own channel set: a folder laid out as edge_lam.air.channels writes one "
                        "(settings.json and train/val/test/zero_shot .npz; doc/air.md)")
    parser.add_argument("--snr-db", type=float, default=20.0, help="SNR of the CSI estimates (default %(default)s)")
    parser.add_argument("--link-snr-db", type=float, default=10.0,
                        help="SNR of the spectral-efficiency figures (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["ar", "gru", "lam", "lam_alone"],
                        choices=["ar", "gru", "lam", "lam_alone"],
                        help="trained predictors to include beside `last` (default all)")
    parser.add_argument("--lam-steps", type=int, help="LAM training steps (default: LamSettings')")
    parser.add_argument("--latency-windows", type=int, default=200, help="windows timed one at a time")
    parser.add_argument("--save-dir", type=pathlib.Path, default=asset_dir("models", "air-predictors"),
                        help="save the trained predictors here for the channel_predictor node (default %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.channel_set or (large_set() if args.large else air_channels_dir())
    splits = read_splits(folder, args.snr_db)
    print(f"channel set {folder}: " + ", ".join(f"{n} {len(s.windows)} windows" for n, s in splits.items()),
          flush=True)
    trained = train_all(splits, args)
    results = evaluate(trained, splits, args)
    summary = figures(results)
    print_tables(results, summary, args)
    plot(results, args.plot)
    if args.json is not None:
        reports = {name: entry.get("report", {}) for name, entry in trained.items()}
        args.json.write_text(json.dumps({**summary, "results": results, "training": reports,
                                         "set": str(folder), "snr_db": args.snr_db, "threads": args.threads},
                                        indent=1, default=str))
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
