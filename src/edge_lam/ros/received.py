"""When a message arrived, on the monotonic clock: what a node behind on its queue must judge silence by."""

from __future__ import annotations

import time

from rclpy.subscription import MessageInfo

__all__ = ["received_at"]


def received_at(info: MessageInfo) -> float:
    """``time.monotonic()`` at the moment the middleware received the message, not when the callback runs.

    A node that falls behind (a loaded CPU) takes messages from its queue late: stamped on processing, an advert sent
    before its writer died would look newer than the writer's death. The middleware stamps reception on the system
    clock; the age it gives is carried over to the monotonic one. No stamp (a middleware without one) or one from the
    future counts as now.
    """
    now = time.monotonic()
    stamp = info.get("received_timestamp", 0) if info else 0
    if not stamp:
        return now
    return now - max(0.0, (time.time_ns() - stamp) / 1e9)
