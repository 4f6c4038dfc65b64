"""An action server a standby gateway runs from its start, silent until it takes over.

Two action servers of one name both get every goal, cancel and result request, and a client takes the first answer
to each. A plain rclpy server in a standby would answer the result request of a goal it does not know at once
(STATUS_UNKNOWN), racing the active gateway's real result; without any server, the standby would never see the goals,
and a goal in flight when the active gateway is killed would be left waiting for a result nobody sends.

``HandoverActionServer`` answers nothing while ``standby``: it hands each goal to ``on_goal`` (the node holds its
request, as it holds those of the topic and the service) and keeps the result requests, the client's address of each
goal's answer. ``adopt`` then accepts a goal the active one was running, so that its feedback and its result reach the
waiting client from here. Goals the active one finished are let go (``forget``). It overrides rclpy's private
``_execute_*_request`` methods (rclpy 9, Kilted): the public callbacks cannot leave a request unanswered.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from action_msgs.msg import GoalInfo, GoalStatus
from rclpy.action import ActionServer
from rclpy.action.server import RCLError, ServerGoalHandle
from rclpy.task import Future

__all__ = ["HandoverActionServer"]

# Result requests kept while standby for goals it does not hold (a result request can come before its goal, and
# goals the standby could not hold still get theirs): the oldest are dropped beyond this.
MAX_WAITING_RESULTS = 256


class HandoverActionServer(ActionServer):
    """An rclpy ActionServer that, while ``standby``, answers no request and passes goals to ``on_goal(goal_id,
    goal)``; ``adopt`` takes a held goal over after a takeover."""

    def __init__(self, *args, on_goal: Callable[[bytes, Any], None], standby: bool, **kwargs) -> None:
        self.standby = standby
        self._on_goal = on_goal
        self._waiting_results: OrderedDict[bytes, list] = OrderedDict()  # goal id -> result request headers
        super().__init__(*args, **kwargs)

    async def _execute_goal_request(self, request_header_and_message) -> None:
        if not self.standby:
            await super()._execute_goal_request(request_header_and_message)
            return
        _, goal_request = request_header_and_message
        self._on_goal(bytes(goal_request.goal_id.uuid), goal_request.goal)

    async def _execute_cancel_request(self, request_header_and_message) -> None:
        if not self.standby:  # a standby's goals are the active one's: it cancels them, and the standby hears it
            await super()._execute_cancel_request(request_header_and_message)

    async def _execute_get_result_request(self, request_header_and_message) -> None:
        request_header, result_request = request_header_and_message
        goal_id = bytes(result_request.goal_id.uuid)
        if self.standby and goal_id not in self._goal_handles:  # kept until adopted, forgotten or the takeover
            self._waiting_results.setdefault(goal_id, []).append(request_header)
            while len(self._waiting_results) > MAX_WAITING_RESULTS:
                self._waiting_results.popitem(last=False)
            return
        await super()._execute_get_result_request(request_header_and_message)

    def forget(self, goal_id: bytes) -> None:
        """The active gateway answered this goal: its result requests are its own."""
        self._waiting_results.pop(goal_id, None)

    def adopt(self, goal_id: bytes, goal: Any, execute: Callable[[ServerGoalHandle], Any]) -> ServerGoalHandle:
        """Accept a goal the active gateway was running and run ``execute`` for it; its client's result requests,
        kept while standby and any that come later, get the result."""
        info = GoalInfo()
        info.goal_id.uuid = list(goal_id)
        info.stamp = self._node.get_clock().now().to_msg()
        with self._lock:
            handle = ServerGoalHandle(self, info, goal)
        self._goal_handles[goal_id] = handle
        self._result_futures[goal_id] = future = Future()
        self.add_future(future)
        for header in self._waiting_results.pop(goal_id, []):
            future.add_done_callback(functools.partial(self._send_result_response, header))
        self._handle.publish_status()
        handle.execute(execute)
        return handle

    def activate(self) -> int:
        """Serve as the active server from now on (after adopting the held goals). A result request kept for a goal
        nobody adopted is answered STATUS_UNKNOWN, as any server answers one for a goal it does not know: its client
        fails at once instead of waiting. Returns how many were."""
        self.standby = False
        unknown = self._action_type.Impl.GetResultService.Response(status=GoalStatus.STATUS_UNKNOWN)
        headers = [header for kept in self._waiting_results.values() for header in kept]
        self._waiting_results.clear()
        for header in headers:
            try:
                with self._lock:
                    self._handle.send_result_response(header, unknown)
            except RCLError:  # its client has gone
                pass
        return len(headers)
