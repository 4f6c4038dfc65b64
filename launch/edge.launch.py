"""An edge box: its host agent, the coordinator that places the model on the fleet, and the gateway.

    ros2 launch edge_lam edge.launch.py host_id:=edge_0

The host agent lives in ``/<host_id>``; the coordinator, the gateway (``requests``, ``results``, ``generate``) and the
model chain live in the fleet's namespace, with the adverts and the plan on ``/edge_lam/adverts`` and
``/edge_lam/plan``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    host_id = LaunchConfiguration('host_id')
    fleet = LaunchConfiguration('fleet_namespace')
    params = LaunchConfiguration('params_file')
    model = {'model': LaunchConfiguration('model')}
    host_agent = Node(
        package='edge_lam', executable='host_agent', name='host_agent', namespace=host_id, output='screen',
        parameters=[params, model, {
            'host_id': host_id, 'role': 'edge',
            'compute_scale': ParameterValue(LaunchConfiguration('compute_scale'), value_type=float),
            'memory_limit_bytes': ParameterValue(LaunchConfiguration('memory_limit_bytes'), value_type=int),
            'components_namespace': ParameterValue(['/', fleet], value_type=str),
        }])
    coordinator = Node(
        package='edge_lam', executable='coordinator', name='coordinator', namespace=fleet, output='screen',
        condition=IfCondition(LaunchConfiguration('coordinator')),
        parameters=[params, model, {'gateway_host': host_id}])
    gateway = Node(package='edge_lam', executable='gateway', name='gateway', namespace=fleet, output='screen',
                   condition=IfCondition(LaunchConfiguration('coordinator')), parameters=[params, model])
    return LaunchDescription([
        DeclareLaunchArgument('host_id', default_value='edge', description='Name of this host in adverts and plans.'),
        DeclareLaunchArgument('fleet_namespace', default_value='edge_lam',
                              description='Namespace of the model chain, requests and results (same on every host).'),
        DeclareLaunchArgument('model', default_value='smollm2-135m-instruct', description='Model id or folder.'),
        DeclareLaunchArgument('params_file', description='YAML parameters of the nodes.',
                              default_value=os.path.join(get_package_share_directory('edge_lam'), 'config',
                                                         'edge.yaml')),
        DeclareLaunchArgument('compute_scale', default_value='1.0', description='Factor on the measured compute.'),
        DeclareLaunchArgument('memory_limit_bytes', default_value='0',
                              description='Memory offered to model modules; 0 = what is available at start.'),
        DeclareLaunchArgument('coordinator', default_value='true',
                              description='Start the coordinator and the gateway (once per fleet: false on a '
                                          'further edge box, which then only hosts modules).'),
        host_agent,
        coordinator,
        gateway,
    ])
