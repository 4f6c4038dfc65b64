"""The component kinds edge_lam can run inside one process (``compose``, a host agent): kind -> node class.

Every component takes ``(node_name, **Node kwargs)``, as rclcpp components take NodeOptions, so any of them can
run as its own process, several under one executor, or be loaded at run time.
"""

from __future__ import annotations

import importlib

__all__ = ["COMPONENTS", "component_class"]

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
    "csi_encoder": "edge_lam.air.csi_encoder_node:CsiEncoderNode",
    "channel_predictor": "edge_lam.air.channel_predictor_node:ChannelPredictorNode",
    "reporter": "edge_lam.reporting.reporter_node:ReporterNode",
    "host_agent": "edge_lam.fleet.host_agent_node:HostAgentNode",
    "coordinator": "edge_lam.fleet.coordinator_node:CoordinatorNode",
    "robot_trainer": "edge_lam.training.robot_trainer_node:RobotTrainerNode",
    "edge_trainer": "edge_lam.training.edge_trainer_node:EdgeTrainerNode",
}


def component_class(kind: str) -> type:
    """The node class of a component kind; ValueError naming the kinds for any other."""
    if kind not in COMPONENTS:
        raise ValueError(f"unknown component kind '{kind}' (known: {', '.join(sorted(COMPONENTS))})")
    module, name = COMPONENTS[kind].split(":")
    return getattr(importlib.import_module(module), name)
