"""Run several edge_lam components in one process under one executor (rclpy has no component container):

    ros2 run edge_lam compose shard:embed_and_blocks shard:tail gateway:gateway \\
        --ros-args --params-file config/smollm2_chain.yaml

Each argument is KIND:NODE_NAME; every node takes its parameters from the file by its name.
"""

from __future__ import annotations

import importlib
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.utilities import remove_ros_args

# Component kind -> module:class. Every component takes (node_name, **Node kwargs).
COMPONENTS = {
    "shard": "edge_lam.chain.shard_node:ShardNode",
    "gateway": "edge_lam.chain.gateway_node:GatewayNode",
    "tensor_echo": "edge_lam.link.tensor_echo_node:TensorEchoNode",
    "camera_encoder": "edge_lam.encoders.camera_node:CameraEncoderNode",
    "odometry_encoder": "edge_lam.encoders.motion_node:OdometryEncoderNode",
    "imu_encoder": "edge_lam.encoders.motion_node:ImuEncoderNode",
    "scan_encoder": "edge_lam.encoders.scan_node:ScanEncoderNode",
    "text_encoder": "edge_lam.encoders.text_node:TextEncoderNode",
    "reporter": "edge_lam.encoders.reporter_node:ReporterNode",
    "host_agent": "edge_lam.fleet.host_agent_node:HostAgentNode",
    "coordinator": "edge_lam.fleet.coordinator_node:CoordinatorNode",
    "robot_trainer": "edge_lam.training.robot_trainer_node:RobotTrainerNode",
    "edge_trainer": "edge_lam.training.edge_trainer_node:EdgeTrainerNode",
}


def component_class(kind: str) -> type:
    if kind not in COMPONENTS:
        raise SystemExit(f"compose: unknown component kind '{kind}' (known: {', '.join(sorted(COMPONENTS))})")
    module, name = COMPONENTS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def parse(specs: list[str]) -> list[tuple[str, str]]:
    pairs = [tuple(spec.split(":", 1)) for spec in specs]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise SystemExit("usage: compose KIND:NODE_NAME [KIND:NODE_NAME ...] [--ros-args ...]")
    return pairs


def main(args: list[str] | None = None) -> None:
    argv = sys.argv if args is None else args
    pairs = parse(remove_ros_args(argv)[1:])
    try:
        with rclpy.init(args=argv):
            executor = SingleThreadedExecutor()
            for kind, name in pairs:
                executor.add_node(component_class(kind)(name))
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
