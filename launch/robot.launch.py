"""A robot: its encoders (camera, odometry, optionally scan), its host agent and its reporter.

    ros2 launch edge_lam robot.launch.py robot_id:=tb3_0 compute_scale:=0.25

Encoders and the reporter live in the robot's namespace (``/<robot_id>/tokens/<modality>``, ``/<robot_id>/reports``),
reading the robot's sensor topics there (``image_raw``, ``image_raw/compressed``, ``odom``, ``scan``); the host agent
lives there too and runs the model modules the coordinator gives it in the fleet's namespace.

With ``keys_dir:=DIR`` (this host's ``<robot_id>.key`` and every fleet host's ``.pub``, see doc/trust.md) the host
agent signs with its key and trusts the fleet's; empty, the control plane is not authenticated (it says so). Where
the RMW has DDS-Security, ``enclave:=/edge_lam/<robot_id>`` with ``ROS_SECURITY_*`` set gives every node that enclave.
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


def check_camera_transport(context):
    """Refuse a camera_transport other than tokens or raw, which would leave the camera without any encoder."""
    choice = LaunchConfiguration('camera_transport').perform(context)
    if choice not in ('tokens', 'raw'):
        raise ValueError(f"camera_transport must be tokens or raw, not '{choice}' (auto: ask `edge-lam transport` "
                         "once the fleet runs; embeddings are not served yet)")
    return []


def generate_launch_description() -> LaunchDescription:
    robot_id = LaunchConfiguration('robot_id')
    namespace = LaunchConfiguration('namespace')
    fleet = LaunchConfiguration('fleet_namespace')
    params = LaunchConfiguration('params_file')
    keys = LaunchConfiguration('keys_dir')
    own_key = PythonExpression(["'", keys, "/", robot_id, ".key' if '", keys, "' else ''"])  # empty: trust off
    trust = {'signing_key': ParameterValue(own_key, value_type=str),
             'trusted_keys': ParameterValue(keys, value_type=str)}
    enclave = ['--enclave', LaunchConfiguration('enclave')]  # used only where ROS_SECURITY_ENABLE=true
    # camera_transport raw: the edge encodes this robot's frames (edge.launch.py camera_for_robot:=<robot_id>).
    camera_here = PythonExpression(["'", LaunchConfiguration('camera'), "'.lower() in ('true', '1') and '",
                                    LaunchConfiguration('camera_transport'), "' == 'tokens'"])
    camera = Node(package='edge_lam', executable='camera_encoder', name='camera_encoder', namespace=namespace,
                  parameters=[params, {'robot_id': robot_id}], output='screen', ros_arguments=enclave,
                  condition=IfCondition(camera_here))
    odometry = Node(package='edge_lam', executable='odometry_encoder', name='odometry_encoder', namespace=namespace,
                    parameters=[params, {'robot_id': robot_id}], output='screen', ros_arguments=enclave,
                    condition=IfCondition(LaunchConfiguration('odometry')))
    scan = Node(package='edge_lam', executable='scan_encoder', name='scan_encoder', namespace=namespace,
                parameters=[params, {'robot_id': robot_id}], output='screen', ros_arguments=enclave,
                condition=IfCondition(LaunchConfiguration('scan')))
    host_agent = Node(
        package='edge_lam', executable='host_agent', name='host_agent', namespace=namespace, output='screen',
        ros_arguments=enclave, parameters=[params, trust, {
            'host_id': robot_id, 'role': 'robot', 'model': LaunchConfiguration('model'),
            'compute_scale': ParameterValue(LaunchConfiguration('compute_scale'), value_type=float),
            'memory_limit_bytes': ParameterValue(LaunchConfiguration('memory_limit_bytes'), value_type=int),
            'components_namespace': ParameterValue(['/', fleet], value_type=str),
        }])
    reporter = Node(
        package='edge_lam', executable='reporter', name='reporter', namespace=namespace, output='screen',
        ros_arguments=enclave, condition=IfCondition(LaunchConfiguration('reporter')),
        parameters=[params, {'requests_topic': ParameterValue(['/', fleet, '/requests'], value_type=str),
                             'results_topic': ParameterValue(['/', fleet, '/results'], value_type=str)}])
    return LaunchDescription([
        DeclareLaunchArgument('robot_id', default_value='robot', description='Robot id, in tokens and plans.'),
        DeclareLaunchArgument('namespace', default_value=robot_id,
                              description='Namespace of the robot nodes (default: the robot id).'),
        DeclareLaunchArgument('fleet_namespace', default_value='edge_lam',
                              description='Namespace of the model chain, requests and results (same on every host).'),
        DeclareLaunchArgument('model', default_value='smollm2-135m-instruct', description='Model id or folder.'),
        DeclareLaunchArgument('params_file', description='YAML parameters of the nodes.',
                              default_value=os.path.join(get_package_share_directory('edge_lam'), 'config',
                                                         'robot.yaml')),
        DeclareLaunchArgument('compute_scale', default_value='1.0',
                              description='Factor on the measured compute (0.25 emulates a slow robot).'),
        DeclareLaunchArgument('memory_limit_bytes', default_value='0',
                              description='Memory offered to model modules; 0 = what is available at start.'),
        DeclareLaunchArgument('camera', default_value='true', description='Start the camera encoder.'),
        DeclareLaunchArgument('camera_transport', default_value='tokens',
                              description='What of the camera crosses the link: tokens (encoded here) or raw '
                                          '(frames to the camera encoder edge.launch.py starts with '
                                          'camera_for_robot:=<robot_id>); doc/encoders.md.'),
        DeclareLaunchArgument('odometry', default_value='true', description='Start the odometry encoder.'),
        DeclareLaunchArgument('scan', default_value='false', description='Start the scan encoder.'),
        DeclareLaunchArgument('reporter', default_value='true', description='Start the reporter.'),
        DeclareLaunchArgument('keys_dir', default_value='',
                              description='Folder with this host\'s <robot_id>.key and the fleet\'s .pub files '
                                          '(doc/trust.md); empty: control plane not authenticated.'),
        DeclareLaunchArgument('enclave', default_value='/',
                              description='SROS2 enclave of the nodes, where ROS_SECURITY_ENABLE=true.'),
        DeclareLaunchArgument('fastdds_profile', default_value='onehost',
                              description='Fast DDS profile of the nodes: onehost (shared memory and UDP), interhost '
                                          '(UDP only, frame-sized fragments: robot and edge on separate machines) '
                                          'or the path of an XML file.'),
        OpaqueFunction(function=fastdds_profile),
        OpaqueFunction(function=check_camera_transport),
        camera,
        odometry,
        scan,
        host_agent,
        reporter,
    ])
