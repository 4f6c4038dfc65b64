"""Run several edge_lam components in one process under one executor (rclpy has no component container):

    ros2 run edge_lam compose shard:embed_and_blocks shard:tail gateway:gateway \\
        --ros-args --params-file config/smollm2_chain.yaml

Each argument is KIND:NODE_NAME; every node takes its parameters from the file by its name.
"""

from __future__ import annotations

import functools
import sys

from rclpy.utilities import remove_ros_args

from edge_lam.container.registry import COMPONENTS, component_class
from edge_lam.ros.main import spin_nodes


def parse(specs: list[str]) -> list[tuple[str, str]]:
    pairs = [tuple(spec.split(":", 1)) for spec in specs]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise SystemExit("usage: compose KIND:NODE_NAME [KIND:NODE_NAME ...] [--ros-args ...]")
    unknown = [kind for kind, _ in pairs if kind not in COMPONENTS]
    if unknown:
        raise SystemExit(f"compose: unknown component kind '{unknown[0]}' (known: {', '.join(sorted(COMPONENTS))})")
    return pairs


def main(args: list[str] | None = None) -> None:
    argv = sys.argv if args is None else args
    pairs = parse(remove_ros_args(argv)[1:])
    spin_nodes([functools.partial(component_class(kind), name) for kind, name in pairs], argv)
