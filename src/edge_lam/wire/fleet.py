"""The fleet's messages and their values: ComputeAdvert <-> Advert (with LinkEstimate <-> Link), PlacementPlan and
ModuleAssignment <-> Assignment, and the role and module-kind codes, for the coordinator, the agents and the demo."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from edge_lam_msgs.msg import ComputeAdvert, LinkEstimate, ModuleAssignment, PlacementPlan

from edge_lam.descriptors import MODULE_KINDS, ROLES, Advert, Link, ModuleSpec
from edge_lam.placement.assignments import Assignment
from edge_lam.wire.stamps import from_ns

__all__ = [
    "KIND_CODES",
    "ROLE_CODES",
    "from_advert_msg",
    "from_assignment_msg",
    "module_of",
    "plan_assignments",
    "role_name",
    "to_advert_msg",
    "to_assignment_msg",
    "to_plan_msg",
]

KIND_CODES = {kind: getattr(ModuleAssignment, f"KIND_{kind.upper()}") for kind in MODULE_KINDS}
ROLE_CODES = {role: getattr(ComputeAdvert, f"ROLE_{role.upper()}") for role in ROLES}
_KINDS = {code: kind for kind, code in KIND_CODES.items()}
_ROLES = {code: role for role, code in ROLE_CODES.items()}


def role_name(code: int) -> str:
    """The role an advert's code stands for; ValueError for a code no role has."""
    if code not in _ROLES:
        raise ValueError(f"role code {code} is not one of {ROLE_CODES}")
    return _ROLES[code]


def to_assignment_msg(assignment: Assignment) -> ModuleAssignment:
    module = assignment.module
    return ModuleAssignment(
        module_id=module.module_id, kind=KIND_CODES[module.kind], layer_start=module.layer_start,
        layer_end=module.layer_end, host_id=assignment.host_id, input_topic=assignment.input_topic,
        output_topic=assignment.output_topic, memory_bytes=assignment.memory_bytes,
        expected_latency_s=assignment.expected_latency_s,
    )


def module_of(msg: ModuleAssignment) -> ModuleSpec:
    """The model module a ModuleAssignment names; ValueError for an encoder (a component, not a model module), an
    unknown kind or a bad layer range."""
    kind = _KINDS.get(msg.kind)
    if kind is None or kind == "encoder":
        raise ValueError(f"module {msg.module_id}: kind {msg.kind} is not a module of the model")
    if kind in ("blocks", "exit"):
        return ModuleSpec(kind, msg.layer_start, msg.layer_end)
    return ModuleSpec(kind)


def from_assignment_msg(msg: ModuleAssignment) -> Assignment:
    return Assignment(module_of(msg), msg.host_id, msg.input_topic, msg.output_topic, msg.memory_bytes,
                      msg.expected_latency_s)


def to_plan_msg(plan_id: str, version: int, model_id: str, wire_dtype: str, assigned: Sequence[Assignment],
                expected_latency_s: float, solver: str, stamp_ns: int, gateway_host: str = "",
                standbys: Sequence[Assignment] = (), weight_dtype: str = "float32") -> PlacementPlan:
    """``gateway_host``: who feeds the chain's first module (with trust on, the only signer it accepts there);
    ``standbys``: idle copies of modules, on their copies' hosts."""
    msg = PlacementPlan(plan_id=plan_id, version=version, model_id=model_id, wire_dtype=wire_dtype,
                        weight_dtype=weight_dtype,
                        modules=[to_assignment_msg(a) for a in assigned], expected_latency_s=expected_latency_s,
                        solver=solver, gateway_host=gateway_host, standbys=[to_assignment_msg(a) for a in standbys])
    msg.header.stamp = from_ns(stamp_ns)
    return msg


def plan_assignments(msg: PlacementPlan) -> list[Assignment]:
    return [from_assignment_msg(m) for m in msg.modules]


def plan_standbys(msg: PlacementPlan) -> list[Assignment]:
    return [from_assignment_msg(m) for m in msg.standbys]


def to_advert_msg(advert: Advert, stamp_ns: int, link_measured_ns: Mapping[str, int] | None = None
                  ) -> ComputeAdvert:
    """``link_measured_ns``: when each peer's link was measured (the advert's stamp where absent: emulated)."""
    measured = link_measured_ns or {}
    msg = ComputeAdvert(
        host_id=advert.host_id, role=ROLE_CODES[advert.role], compute_gflops=advert.compute_gflops,
        memory_total_bytes=advert.memory_total_bytes, memory_free_bytes=advert.memory_free_bytes, load=advert.load,
        battery_fraction=math.nan if advert.battery_fraction is None else advert.battery_fraction,
        links=[LinkEstimate(peer_host_id=link.dst, latency_s=link.latency_s, bandwidth_bps=link.bandwidth_bps,
                            measured_at=from_ns(measured.get(link.dst, stamp_ns))) for link in advert.links],
        modules_hosted=list(advert.modules_hosted), memory_bandwidth_gbps=advert.memory_bandwidth_gbps,
    )
    msg.header.stamp = from_ns(stamp_ns)
    return msg


def from_advert_msg(msg: ComputeAdvert, use_load: bool = True) -> Advert:
    """The advert as the coordinator keeps it (ValueError when it can't be used); link estimates not measured yet
    (no bandwidth) are left out, and the load too unless ``use_load``."""
    links = tuple(Link(msg.host_id, e.peer_host_id, e.latency_s, e.bandwidth_bps)
                  for e in msg.links
                  if e.bandwidth_bps > 0 and math.isfinite(e.bandwidth_bps) and 0 <= e.latency_s < math.inf)
    battery = None if math.isnan(msg.battery_fraction) else float(msg.battery_fraction)
    return Advert(msg.host_id, role_name(msg.role), msg.compute_gflops, msg.load if use_load else 0.0,
                  msg.memory_free_bytes, msg.memory_total_bytes, links, battery, tuple(msg.modules_hosted),
                  msg.memory_bandwidth_gbps)
