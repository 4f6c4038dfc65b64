"""The demo's two pictures: latency per stage over time, and the placement of the model's modules on the hosts."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only: no display on a robot or in CI

import itertools

import matplotlib.pyplot as plt

from edge_lam.demo.summary import PlanRecord, ReportRecord, stage_label

__all__ = ["plot_latency", "plot_placement"]


def plot_latency(reports: list[ReportRecord], path: pathlib.Path) -> None:
    """One stacked bar per report at its time: every stage but the total, in the order the report lists them."""
    ok = [r for r in reports if not r.error and r.text]
    labels = list(dict.fromkeys(stage_label(s) for r in ok for s in r.stages if s.stage != "total"))
    figure, axes = plt.subplots(figsize=(10, 5))
    width = 0.6 * min((b.t_s - a.t_s for a, b in itertools.pairwise(ok)), default=2.0)
    bottoms = [0.0] * len(ok)
    colours = plt.get_cmap("tab20")
    for index, label in enumerate(labels):
        heights = [sum(s.seconds for s in r.stages if stage_label(s) == label) for r in ok]
        axes.bar([r.t_s for r in ok], heights, width, bottom=bottoms, label=label, color=colours(index % 20))
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.plot([r.t_s for r in ok], [r.total_s for r in ok], "k_", markersize=20, label="total (measured)")
    axes.set_xlabel("time since the demo started, s")
    axes.set_ylabel("latency of the report, s")
    axes.set_title("Where each report's time went")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_placement(plans: list[PlanRecord], path: pathlib.Path) -> None:
    """One row per plan version: the chain from embedding to head, each module coloured by its host."""
    hosts = list(dict.fromkeys(h for p in plans for h in p.hosts()))
    colours = {host: plt.get_cmap("tab10")(i % 10) for i, host in enumerate(hosts)}
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.6 * len(plans)))
    for row, plan in enumerate(plans):
        layers = max((m.layer_end for m in plan.modules if m.kind == "blocks"), default=0)
        for module in plan.modules:
            # the chain in layers: the embedding just before layer 0, the head just after the last layer
            start, end = {"embedding": (-1, 0), "head": (layers, layers + 1)}.get(
                module.kind, (module.layer_start, module.layer_end))
            axes.barh(row, end - start, left=start, color=colours[module.host_id], edgecolor="white")
            label = {"embedding": "emb"}.get(module.module_id, module.module_id.replace("blocks_", ""))
            axes.text((start + end) / 2, row, label.replace("_", "-"),
                      ha="center", va="center", fontsize="x-small")
    axes.set_yticks(range(len(plans)), [f"v{p.version} at {p.t_s:.0f} s" for p in plans])
    axes.set_xlabel("layer (embedding left of 0, head right of the last)")
    axes.set_title("Placement: which module runs on which host")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[h]) for h in hosts]
    axes.legend(handles, hosts, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
