"""An edge box: its host agent, the coordinator that places the model on the fleet, and the gateway.

    ros2 launch edge_lam edge.launch.py host_id:=edge_0

The host agent lives in ``/<host_id>``; the coordinator, the gateway (``requests``, ``results``, ``generate``) and the
model chain live in the fleet's namespace, with the adverts and the plan on ``/edge_lam/adverts`` and
``/edge_lam/plan``. With ``camera_for_robot:=<robot_id>`` it also encodes that robot's raw camera frames (the
robot's ``camera_transport:=raw``).

With ``keys_dir:=DIR`` (this host's ``<host_id>.key`` and every fleet host's ``.pub``, see doc/trust.md) the host
agent, the coordinator and the gateway sign with the host's key and trust the fleet's; empty, the control plane is
not authenticated (they say so). Where the RMW has DDS-Security, ``enclave:=/edge_lam/<host_id>`` with
``ROS_SECURITY_*`` set gives every node that enclave.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from edge_lam.ros.fastdds import profile_path


def fastdds_profile(context):
    """Point FASTDDS_DEFAULT_PROFILES_FILE of every node started after this at the chosen profile."""
    config = os.path.join(get_package_share_directory('edge_lam'), 'config')
    choice = LaunchConfiguration('fastdds_profile').perform(context)
    return [SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profile_path(choice, config))]


def generate_launch_description() -> LaunchDescription:
    host_id = LaunchConfiguration('host_id')
    fleet = LaunchConfiguration('fleet_namespace')
    params = LaunchConfiguration('params_file')
    model = {'model': LaunchConfiguration('model')}
    keys = LaunchConfiguration('keys_dir')
    own_key = PythonExpression(["'", keys, "/", host_id, ".key' if '", keys, "' else ''"])  # empty: trust off
    trust = {'signing_key': ParameterValue(own_key, value_type=str),
             'trusted_keys': ParameterValue(keys, value_type=str)}
    enclave = ['--enclave', LaunchConfiguration('enclave')]  # used only where ROS_SECURITY_ENABLE=true
    host_agent = Node(
        package='edge_lam', executable='host_agent', name='host_agent', namespace=host_id, output='screen',
        ros_arguments=enclave, parameters=[params, model, trust, {
            'host_id': host_id, 'role': 'edge',
            'compute_scale': ParameterValue(LaunchConfiguration('compute_scale'), value_type=float),
            'memory_limit_bytes': ParameterValue(LaunchConfiguration('memory_limit_bytes'), value_type=int),
            'components_namespace': ParameterValue(['/', fleet], value_type=str),
        }])
    coordinator = Node(
        package='edge_lam', executable='coordinator', name='coordinator', namespace=fleet, output='screen',
        condition=IfCondition(LaunchConfiguration('coordinator')), ros_arguments=enclave,
        parameters=[params, model, trust, {'gateway_host': host_id}])
    gateway = Node(package='edge_lam', executable='gateway', name='gateway', namespace=fleet, output='screen',
                   condition=IfCondition(LaunchConfiguration('coordinator')), ros_arguments=enclave,
                   parameters=[params, model, trust])
    # A robot's camera encoder on this host (that robot's camera_transport:=raw): in the robot's namespace, reading
    # its frames across the link; its tokens go back to the robot's reporter without the embedding.
    robot = LaunchConfiguration('camera_for_robot')
    camera = Node(package='edge_lam', executable='camera_encoder', name='camera_encoder', namespace=robot,
                  parameters=[params, {'robot_id': robot, 'embedding_dtype': 'none'}], output='screen',
                  ros_arguments=enclave, condition=IfCondition(PythonExpression(["'", robot, "' != ''"])))
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
        DeclareLaunchArgument('keys_dir', default_value='',
                              description='Folder with this host\'s <host_id>.key and the fleet\'s .pub files '
                                          '(doc/trust.md); empty: control plane not authenticated.'),
        DeclareLaunchArgument('enclave', default_value='/',
                              description='SROS2 enclave of the nodes, where ROS_SECURITY_ENABLE=true.'),
        DeclareLaunchArgument('fastdds_profile', default_value='onehost',
                              description='Fast DDS profile of the nodes: onehost (shared memory and UDP), interhost '
                                          '(UDP only, frame-sized fragments: robot and edge on separate machines) '
                                          'or the path of an XML file.'),
        DeclareLaunchArgument('camera_for_robot', default_value='',
                              description='Robot id whose raw camera frames this host encodes (that robot runs '
                                          'with camera_transport:=raw); empty: none.'),
        OpaqueFunction(function=fastdds_profile),
        host_agent,
        coordinator,
        gateway,
        camera,
    ])
