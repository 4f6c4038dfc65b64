"""The standard component container services, answered by a host agent where ``composition_interfaces`` is
installed (any ROS 2 install), so that ``ros2 component load/list/unload`` and launch_ros's
``ComposableNodeContainer`` / ``LoadComposableNodes`` can drive it like rclcpp's container.

``~/_container/load_node`` takes ``package_name`` ``edge_lam`` and a ``plugin_name`` that is a component kind of
``edge_lam.container.registry`` (``shard``, ``camera_encoder``, ...), its class name (``ShardNode``, or
``edge_lam::ShardNode`` as a C++ user would write it) or its ``module:Class`` path; ``node_name`` and
``node_namespace`` (defaults: the kind and the agent's ``components_namespace``), ``parameters`` and ``remap_rules``
are honoured; ``log_level`` and ``extra_arguments`` (such as ``use_intra_process_comms``, which rclpy has not) are
ignored with a warning. Every answer carries the reason when it fails; nothing here can take the agent down."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Awaitable, Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter

from edge_lam.container.loader import ComponentRequest
from edge_lam.container.registry import COMPONENTS

__all__ = ["LoadComponent", "add_container_services", "component_kind"]

# Loads a component and waits for it: -> (success, message, full node name).
LoadComponent = Callable[[ComponentRequest], Awaitable[tuple[bool, str, str]]]


def component_kind(package_name: str, plugin_name: str) -> str:
    """The compose kind a LoadNode request names, or ValueError saying what can be named."""
    if package_name != "edge_lam":
        raise ValueError(f"this container loads edge_lam components only, not package '{package_name}'")
    wanted = plugin_name.strip().split("::")[-1]
    for kind, path in COMPONENTS.items():
        if wanted in (kind, path, path.rpartition(":")[2]):
            return kind
    raise ValueError(f"no edge_lam component '{plugin_name}'; one of {', '.join(sorted(COMPONENTS))} (or its class)")


def add_container_services(node: Node, load: LoadComponent, unload: Callable[[str], bool],
                           full_names: Callable[[], dict[str, str]], callback_group: CallbackGroup | None = None
                           ) -> bool:
    """Create the three services on ``node`` when composition_interfaces is installed; False when it is not.

    ``full_names() -> {full node name: entry}`` lists every running component (those the placement plan loaded
    too), ``unload(entry)`` stops one; the services give each a unique id, as the standard container does.
    """
    if importlib.util.find_spec("composition_interfaces") is None:
        return False
    from composition_interfaces.srv import ListNodes, LoadNode, UnloadNode

    ids: dict[int, str] = {}  # unique id -> full node name
    counter = itertools.count(1)
    logger = node.get_logger()

    async def load_node(request: LoadNode.Request, response: LoadNode.Response) -> LoadNode.Response:
        try:
            kind = component_kind(request.package_name, request.plugin_name)
            parameters = [Parameter.from_parameter_msg(p) for p in request.parameters]
        except (ValueError, TypeError) as err:
            response.success, response.error_message = False, str(err)
            logger.warning(f"load_node refused: {err}")
            return response
        if request.log_level or request.extra_arguments:
            logger.warning("load_node: log_level and extra_arguments are not supported by this container; ignored")
        success, message, full_name = await load(ComponentRequest(
            kind, request.node_name or kind, request.node_namespace, tuple(parameters), tuple(request.remap_rules)))
        response.success, response.error_message = success, "" if success else message
        if success:
            unique_id = next(counter)
            ids[unique_id] = full_name
            response.full_node_name, response.unique_id = full_name, unique_id
        return response

    def unload_node(request: UnloadNode.Request, response: UnloadNode.Response) -> UnloadNode.Response:
        entry = full_names().get(ids.get(request.unique_id, ""))
        if entry is None or not unload(entry):
            response.success = False
            response.error_message = f"no component with unique id {request.unique_id} is loaded here"
        else:
            del ids[request.unique_id]
            response.success = True
        return response

    def list_nodes(_: ListNodes.Request, response: ListNodes.Response) -> ListNodes.Response:
        running = full_names()
        for gone in [unique_id for unique_id, name in ids.items() if name not in running]:
            del ids[gone]
        for name in running.keys() - set(ids.values()):  # loaded by the plan or load_module: give it an id too
            ids[next(counter)] = name
        response.unique_ids, response.full_node_names = list(ids), list(ids.values())
        return response

    node.create_service(LoadNode, "~/_container/load_node", load_node, callback_group=callback_group)
    node.create_service(UnloadNode, "~/_container/unload_node", unload_node, callback_group=callback_group)
    node.create_service(ListNodes, "~/_container/list_nodes", list_nodes, callback_group=callback_group)
    return True
