"""``edge-lam transport``: which transport each sensor stream of a robot should use, from a running fleet's adverts.

Launch files start encoders where their arguments say, before any advert exists; this command closes the loop on a
real fleet: it listens to the ComputeAdverts until the robot's and the edge host's are in with a measured link
between them, and prints per stream the chooser's pick (``edge_lam.fleet.transport``), its reason and the launch
arguments that put it in place. It only listens: nothing is changed, signatures are not checked (advice for a
person, who reads the figures it shows).
"""

from __future__ import annotations

from collections.abc import Mapping

from edge_lam.descriptors import Advert
from edge_lam.fleet.transport import DEFAULT_PROFILES, Decision, choose_from_adverts

__all__ = ["advice_lines", "advise", "pick_hosts"]


def pick_hosts(adverts: Mapping[str, Advert], robot: str | None, edge: str | None
               ) -> tuple[Advert | None, Advert | None]:
    """The named hosts' adverts, or the first robot and the first host that is not one (by name)."""
    ordered = [adverts[h] for h in sorted(adverts)]
    robot_advert = adverts.get(robot) if robot else next((a for a in ordered if a.role == "robot"), None)
    edge_advert = adverts.get(edge) if edge else next((a for a in ordered if a.role != "robot"), None)
    return robot_advert, edge_advert


def has_link(robot: Advert, edge: Advert) -> bool:
    return any(k.dst == edge.host_id for k in robot.links) or any(k.dst == robot.host_id for k in edge.links)


def advice_lines(robot: Advert, edge: Advert, period_s: float, reporter_on_robot: bool) -> list[str]:
    """What the command prints: the hosts and their link, then per stream the pick, why, and how to launch it."""
    link = next((k for k in robot.links if k.dst == edge.host_id), None) or next(
        (k for k in edge.links if k.dst == robot.host_id), None)
    measured = f": link {link.latency_s * 1e3:.1f} ms, {link.bandwidth_bps / 1e6:.1f} Mbit/s" if link else ""
    lines = [f"robot {robot.host_id} ({robot.effective_gflops:.1f} GFLOP/s free) -> edge {edge.host_id} "
             f"({edge.effective_gflops:.1f} GFLOP/s free){measured}"]
    decisions: dict[str, Decision] = {
        stream: choose_from_adverts(profile, robot, edge, period_s=period_s, reporter_on_robot=reporter_on_robot)
        for stream, profile in DEFAULT_PROFILES.items()}
    for stream, decision in decisions.items():
        lines.append(f"{stream}: {decision.choice} ({decision.reason})")
    if decisions["image"].choice == "raw":
        lines.append(f"launch: robot.launch.py robot_id:={robot.host_id} camera_transport:=raw; "
                     f"edge.launch.py host_id:={edge.host_id} camera_for_robot:={robot.host_id}")
    else:
        lines.append(f"launch: robot.launch.py robot_id:={robot.host_id} camera_transport:=tokens (the default)")
    return lines


def advise(robot: str | None, edge: str | None, adverts_topic: str, period_s: float, reporter_on_robot: bool,
           wait_s: float) -> int:
    """Listen up to ``wait_s`` for the two hosts' adverts with a link between them, print the advice; 0 when given,
    1 when the adverts did not come (said on stderr)."""
    import sys

    import rclpy
    from edge_lam_msgs.msg import ComputeAdvert

    from edge_lam.ros.qos import ADVERTS_READER
    from edge_lam.ros.spin import spin_until
    from edge_lam.wire.fleet import from_advert_msg

    adverts: dict[str, Advert] = {}

    def take(msg: ComputeAdvert) -> None:
        try:
            adverts[msg.host_id] = from_advert_msg(msg)
        except ValueError as err:
            print(f"edge-lam transport: ignored an advert of '{msg.host_id}': {err}", file=sys.stderr)

    def ready() -> bool:
        found = pick_hosts(adverts, robot, edge)
        return None not in found and has_link(*found)

    with rclpy.init():
        node = rclpy.create_node("transport_advice")
        node.create_subscription(ComputeAdvert, adverts_topic, take, ADVERTS_READER)
        spin_until(node, ready, wait_s)
        node.destroy_node()
    if not ready():
        heard = ", ".join(f"{a.host_id} ({a.role}, {len(a.links)} links)" for a in adverts.values()) or "none"
        print(f"edge-lam transport: no robot and edge adverts with a link between them on {adverts_topic} within "
              f"{wait_s:g} s (heard: {heard})", file=sys.stderr)
        return 1
    for line in advice_lines(*pick_hosts(adverts, robot, edge), period_s, reporter_on_robot):
        print(line)
    return 0
