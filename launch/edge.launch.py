"""An edge box: its host agent, the coordinator that places the model on the fleet, and the gateway.

    ros2 launch edge_lam edge.launch.py host_id:=edge_0

The host agent lives in ``/<host_id>``; the coordinator, the gateway (``requests``, ``results``, ``generate``) and the
model chain live in the fleet's namespace, with the adverts and the plan on ``/edge_lam/adverts`` and
``/edge_lam/plan``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# fastdds_profile -> the Fast DDS profile file in config/ (doc/network.md, "Across hosts").
FASTDDS_PROFILES = {'onehost': 'fastdds.xml', 'interhost': 'fastdds_interhost.xml'}


def fastdds_profile(context):
    """Point FASTDDS_DEFAULT_PROFILES_FILE of every node started after this at the chosen profile: a name of
    FASTDDS_PROFILES or the path of an XML file of the user's."""
    choice = LaunchConfiguration('fastdds_profile').perform(context)
    if choice in FASTDDS_PROFILES:
        path = os.path.join(get_package_share_directory('edge_lam'), 'config', FASTDDS_PROFILES[choice])
    elif os.path.isfile(choice):
        path = choice
    else:
        raise RuntimeError(f"fastdds_profile:={choice}: expected onehost, interhost or the path of an XML file")
    return [SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', path)]


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
        DeclareLaunchArgument('fastdds_profile', default_value='onehost',
                              description='Fast DDS profile of the nodes: onehost (shared memory and UDP), interhost '
                                          '(UDP only, frame-sized fragments: robot and edge on separate machines) '
                                          'or the path of an XML file.'),
        OpaqueFunction(function=fastdds_profile),
        host_agent,
        coordinator,
        gateway,
    ])
