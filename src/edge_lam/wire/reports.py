"""The reporter's Report message from its values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from builtin_interfaces.msg import Time
from edge_lam_msgs.msg import Report

from edge_lam.descriptors import Stage
from edge_lam.wire.chain import to_stage_msgs

__all__ = ["to_report_msg"]


def to_report_msg(*, robot_id: str, request_id: str, prompt: str, sources: Sequence[str], text: str,
                  error_code: int, error_message: str, latency_s: float, stages: Iterable[Stage],
                  stamp: Time) -> Report:
    report = Report(robot_id=robot_id, request_id=request_id, prompt=prompt, sources=list(sources), text=text,
                    error_code=error_code, error_message=error_message, latency_s=latency_s,
                    timings=to_stage_msgs(stages))
    report.header.stamp = stamp
    return report
