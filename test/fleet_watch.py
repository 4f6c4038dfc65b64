"""Prints what a fleet publishes, one JSON line per message, for a test that cannot join the fleet's host itself
(test_fleet_links.py runs it inside the edge host's network namespace).

    fleet_watch.py ADVERTS_TOPIC PLAN_TOPIC

An advert line: {"advert": host, "gflops", "memory_free", "memory_total", "links": {peer: [latency_s,
bandwidth_bps]}, "hosted": [module ids]}. A plan line: {"plan": version, "modules": [[module_id, host_id], ...]}.
It runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys

import rclpy
from edge_lam_msgs.msg import ComputeAdvert, PlacementPlan
from rclpy.executors import ExternalShutdownException

from edge_lam.ros.qos import ADVERTS_READER, LATCHED


def on_advert(msg: ComputeAdvert) -> None:
    print(json.dumps({"advert": msg.host_id, "gflops": msg.compute_gflops,
                      "bandwidth_gbps": msg.memory_bandwidth_gbps, "memory_free": msg.memory_free_bytes,
                      "memory_total": msg.memory_total_bytes,
                      "links": {e.peer_host_id: [e.latency_s, e.bandwidth_bps] for e in msg.links},
                      "hosted": list(msg.modules_hosted)}), flush=True)


def on_plan(msg: PlacementPlan) -> None:
    print(json.dumps({"plan": msg.version, "modules": [[m.module_id, m.host_id] for m in msg.modules]}), flush=True)


def main() -> None:
    adverts_topic, plan_topic = sys.argv[1:3]
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    with rclpy.init():
        node = rclpy.create_node("fleet_watch")
        node.create_subscription(ComputeAdvert, adverts_topic, on_advert, ADVERTS_READER)
        node.create_subscription(PlacementPlan, plan_topic, on_plan, LATCHED)
        with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
            rclpy.spin(node)


if __name__ == "__main__":
    main()
