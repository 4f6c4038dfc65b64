"""An early exit on the robot: where a plan can put one, and the plan's assignments with it added.

The exit goes on the host that holds the start of the chain (the robot: embedding and first blocks), at the deepest
trained exit layer its blocks reach, so that it reads the hidden states the robot computes anyway. Its topics are
the hidden states it reads and passes on unchanged (``chain/hidden_L`` in and out), so
:func:`~edge_lam.placement.assignments.shard_groups` keeps it in the robot's shard: ``[embedding, blocks:0:L,
exit:L]``, or ``[embedding, blocks:0:L, exit:L, blocks:L:M]`` when the robot's blocks go past the exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from edge_lam.descriptors import ModuleSpec
from edge_lam.placement.assignments import Assignment
from edge_lam.placement.types import Unit

__all__ = ["exit_layer_for", "with_exit"]


def _robot_blocks(assigned: Sequence[Assignment]) -> list[Assignment]:
    """The block ranges of the host that runs the chain's first module, while the chain stays on it."""
    if not assigned:
        return []
    host = assigned[0].host_id
    run = []
    for assignment in assigned:
        if assignment.host_id != host:
            break
        if assignment.module.kind == "blocks":
            run.append(assignment)
    return run


def exit_layer_for(assigned: Sequence[Assignment], trained_layers: Iterable[int]) -> int | None:
    """The deepest trained exit layer within the blocks the chain's first host runs (None: no such layer)."""
    blocks = _robot_blocks(assigned)
    reach = max((a.module.layer_end for a in blocks), default=0)
    fitting = [layer for layer in trained_layers if 0 < layer <= reach]
    return max(fitting, default=None)


def _split(assignment: Assignment, layer: int) -> list[Assignment]:
    """A block range cut at ``layer``, memory and compute shared by layer count (its layers cost alike)."""
    module = assignment.module
    if not module.layer_start < layer < module.layer_end:
        return [assignment]
    share = (layer - module.layer_start) / (module.layer_end - module.layer_start)
    below, above = ModuleSpec("blocks", module.layer_start, layer), ModuleSpec("blocks", layer, module.layer_end)
    memory = round(assignment.memory_bytes * share)
    return [
        Assignment(below, assignment.host_id, assignment.input_topic, f"chain/hidden_{layer}", memory,
                   assignment.expected_latency_s * share),
        Assignment(above, assignment.host_id, f"chain/hidden_{layer}", assignment.output_topic,
                   assignment.memory_bytes - memory, assignment.expected_latency_s * (1 - share)),
    ]


def with_exit(assigned: Sequence[Assignment], trained_layers: Iterable[int], exit_unit: Callable[[int], Unit],
              host_gflops: float) -> list[Assignment]:
    """``assigned`` (a plan's assignments in chain order) with an exit on the first host at
    :func:`exit_layer_for`'s layer, priced by ``exit_unit(layer)`` on ``host_gflops`` per decided token; unchanged
    when no trained exit fits."""
    layer = exit_layer_for(assigned, trained_layers)
    if layer is None:
        return list(assigned)
    host = assigned[0].host_id
    unit = exit_unit(layer)
    topic = f"chain/hidden_{layer}"
    exit_assignment = Assignment(unit.module, host, topic, topic, unit.memory_bytes(0),
                                 unit.flops(1, 0) / (host_gflops * 1e9) if host_gflops > 0 else float("inf"))
    placed: list[Assignment] = []
    for assignment in assigned:
        if assignment.host_id == host and assignment.module.kind == "blocks" and \
                assignment.module.layer_start < layer <= assignment.module.layer_end:
            below, *above = _split(assignment, layer)  # below ends at the exit's layer
            placed.extend([below, exit_assignment, *above])
        else:
            placed.append(assignment)
    return placed
