"""One side of an interface round trip, run as its own process by test_interfaces.py.

    ros_peer.py publish  pkg/msg/Type  TOPIC    publish the sample once a subscriber matches, wait for its ack
    ros_peer.py receive  pkg/msg/Type  TOPIC    take one message and check every field against the sample
    ros_peer.py serve    pkg/srv/Type  SERVICE  answer one call: check the request, reply with the sample response
    ros_peer.py call     pkg/srv/Type  SERVICE  call once with the sample request and check every field of the reply
    ros_peer.py execute  pkg/action/Type ACTION serve one goal: check it, send the sample feedback until cancelled,
                                                then the sample result
    ros_peer.py goal     pkg/action/Type ACTION send the sample goal, cancel it once feedback came, check the
                                                feedback and the result

Each peer prints one `verdict: ok|mismatch|timeout` line as soon as it knows, before tearing down: Fast DDS can
deadlock while a participant is deleted (eProsima/Fast-DDS#6502, open), so the teardown is bounded and its outcome
is told apart from the verdict. Exit status: 0 ok, 1 mismatch (listed on stderr), 2 time-out; a hung teardown ends
the process through faulthandler (status 1, a `Timeout` traceback after the verdict line).
"""

from __future__ import annotations

import faulthandler
import sys

import rclpy
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient, ActionServer, CancelResponse
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

from edge_lam.ros.spin import spin_until
from message_samples import differences, interface_class, make_sample

TIMEOUT_S = 30.0
TEARDOWN_S = 10.0
VERDICTS = {0: "ok", 1: "mismatch", 2: "timeout"}
QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def report(what: str, found: list[str]) -> int:
    print(f"{what}: checked, {len(found)} mismatches", flush=True)
    for line in found:
        print(f"{what}: mismatch at {line}", file=sys.stderr)
    return 1 if found else 0


def publish(node: Node, cls, topic: str) -> int:
    publisher = node.create_publisher(cls, topic, QOS)
    if not spin_until(node, lambda: publisher.get_subscription_count() > 0, TIMEOUT_S):
        return 2
    publisher.publish(make_sample(cls))
    return 0 if publisher.wait_for_all_acked(Duration(seconds=TIMEOUT_S)) else 2


def receive(node: Node, cls, topic: str) -> int:
    received = []
    node.create_subscription(cls, topic, received.append, QOS)
    if not spin_until(node, lambda: received, TIMEOUT_S):
        return 2
    return report("message", differences(make_sample(cls), received[0]))


def serve(node: Node, cls, name: str) -> int:
    found: list[str] = []
    served = []

    def answer(request, response):
        found.extend(differences(make_sample(cls.Request), request))
        served.append(True)
        return make_sample(cls.Response)

    node.create_service(cls, name, answer)
    if not spin_until(node, lambda: served, TIMEOUT_S):
        return 2
    spin_until(node, lambda: False, 1.0)  # let the reply leave before the process ends
    return report("request", found)


def call(node: Node, cls, name: str) -> int:
    client = node.create_client(cls, name)
    if not client.wait_for_service(timeout_sec=TIMEOUT_S):
        return 2
    future = client.call_async(make_sample(cls.Request))
    if not spin_until(node, future.done, TIMEOUT_S):
        return 2
    return report("response", differences(make_sample(cls.Response), future.result()))


def execute(node: Node, cls, name: str) -> int:
    found: list[str] = []
    goals, finished = [], []
    cancelled = Future()

    async def run(goal):
        found.extend(differences(make_sample(cls.Goal), goal.request))
        goals.append(goal)
        await cancelled  # feedback goes out meanwhile, from the timer: the client cancels once it has some
        goal.canceled()
        finished.append(True)
        return make_sample(cls.Result)

    def cancel(goal) -> CancelResponse:
        cancelled.set_result(True)
        return CancelResponse.ACCEPT

    ActionServer(node, cls, name, execute_callback=run, cancel_callback=cancel)
    node.create_timer(0.1, lambda: goals and not finished and goals[0].publish_feedback(make_sample(cls.Feedback)))
    if not spin_until(node, lambda: finished, TIMEOUT_S):
        return 2
    spin_until(node, lambda: False, 1.0)  # let the result leave before the process ends
    return report("goal", found)


def goal(node: Node, cls, name: str) -> int:
    client = ActionClient(node, cls, name)
    if not client.wait_for_server(timeout_sec=TIMEOUT_S):
        return 2
    feedback = []
    sent = client.send_goal_async(make_sample(cls.Goal), feedback_callback=lambda m: feedback.append(m.feedback))
    if not spin_until(node, sent.done, TIMEOUT_S) or not sent.result().accepted \
            or not spin_until(node, lambda: feedback, TIMEOUT_S):
        return 2
    cancel, result = sent.result().cancel_goal_async(), sent.result().get_result_async()
    if not spin_until(node, lambda: cancel.done() and result.done(), TIMEOUT_S):
        return 2
    found = differences(make_sample(cls.Feedback), feedback[0]) + differences(make_sample(cls.Result),
                                                                               result.result().result)
    if result.result().status != GoalStatus.STATUS_CANCELED:
        found.append(f"status: {result.result().status} != {GoalStatus.STATUS_CANCELED} (canceled)")
    return report("feedback and result", found)


def main() -> int:
    # A peer that is still alive well after its own time-outs is stuck in native code: say where, and end.
    faulthandler.dump_traceback_later(TIMEOUT_S + 15, exit=True)
    mode, type_name, name = sys.argv[1:4]
    cls = interface_class(type_name)
    with rclpy.init():
        node = rclpy.create_node(f"peer_{mode}")
        print(f"{mode} {type_name} on {name}: started", flush=True)
        modes = {"publish": publish, "receive": receive, "serve": serve, "call": call, "execute": execute, "goal": goal}
        rc = modes[mode](node, cls, name)
        print(f"verdict: {VERDICTS[rc]}", flush=True)
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(TEARDOWN_S, exit=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
