"""Message stamps (``builtin_interfaces/Time``) to and from integer nanoseconds and float seconds."""

from __future__ import annotations

from builtin_interfaces.msg import Time

__all__ = ["from_ns", "to_ns", "to_seconds"]


def to_ns(stamp: Time) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def from_ns(ns: int) -> Time:
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)
