"""Assignments to and from ModuleAssignment / PlacementPlan messages, in one place for coordinator and agents."""

from __future__ import annotations

from edge_lam_msgs.msg import ModuleAssignment, PlacementPlan

from edge_lam.placement.assignments import Assignment

KINDS = {"embedding": ModuleAssignment.KIND_EMBEDDING, "blocks": ModuleAssignment.KIND_BLOCKS,
         "head": ModuleAssignment.KIND_HEAD, "projector": ModuleAssignment.KIND_PROJECTOR}
SPECS = {ModuleAssignment.KIND_EMBEDDING: "embedding", ModuleAssignment.KIND_HEAD: "head",
         ModuleAssignment.KIND_PROJECTOR: "projector"}


def to_assignment_msg(assignment: Assignment) -> ModuleAssignment:
    module = assignment.module
    return ModuleAssignment(
        module_id=module.module_id, kind=KINDS[module.kind], layer_start=module.layer_start,
        layer_end=module.layer_end, host_id=assignment.host_id, input_topic=assignment.input_topic,
        output_topic=assignment.output_topic, memory_bytes=assignment.memory_bytes,
        expected_latency_s=assignment.expected_latency_s,
    )


def from_assignment_msg(msg: ModuleAssignment) -> Assignment:
    if msg.kind == ModuleAssignment.KIND_BLOCKS:
        spec = f"blocks:{msg.layer_start}:{msg.layer_end}"
    elif msg.kind in SPECS:
        spec = SPECS[msg.kind]
    else:
        raise ValueError(f"module {msg.module_id}: kind {msg.kind} is not a chain module")
    return Assignment(spec, msg.host_id, msg.input_topic, msg.output_topic, msg.memory_bytes, msg.expected_latency_s)


def plan_assignments(msg: PlacementPlan) -> list[Assignment]:
    return [from_assignment_msg(m) for m in msg.modules]
