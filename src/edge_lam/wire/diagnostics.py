"""Statuses on /diagnostics: plain values to a ``diagnostic_msgs/DiagnosticArray``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from edge_lam.wire.stamps import from_ns

__all__ = ["LEVEL_CODES", "Status", "to_diagnostic_array"]

LEVEL_CODES = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


@dataclasses.dataclass(frozen=True)
class Status:
    """One component's or host's state: ``level`` ok, warn or error; ``values`` key -> text, in order."""

    name: str
    level: str
    message: str
    hardware_id: str
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)


def to_diagnostic_array(statuses: Sequence[Status], stamp_ns: int) -> DiagnosticArray:
    array = DiagnosticArray(status=[
        DiagnosticStatus(level=LEVEL_CODES[s.level], name=s.name, message=s.message, hardware_id=s.hardware_id,
                         values=[KeyValue(key=k, value=v) for k, v in s.values.items()])
        for s in statuses])
    array.header.stamp = from_ns(stamp_ns)
    return array
