"""The demo on one machine with a ROS install: a robot and an edge host, the bundled bags replayed into the robot.

    ros2 launch edge_lam demo.launch.py

The same graph as ``edge-lam demo`` (which also prints the reports with their latency breakdown and writes a
summary and plots): robot.launch.py and edge.launch.py with config/demo.yaml, the robot at half the edge's compute,
each offering too little memory for the whole model so that the coordinator splits it, and the camera and odometry
bags replayed in a loop under ``/<robot_id>``. Watch ``/<robot_id>/reports`` and ``/edge_lam/plan``.

The control plane is signed as on a real fleet: ``keys_dir`` (default: edge_lam_demo_keys in the temporary folder)
gets a key for the robot and one for the edge when it lacks them, and is both hosts' trust store.
"""

import os
import tempfile

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from edge_lam.assets.cache import asset_dir
from edge_lam.trust.keys import make_keys

MIB = 2**20


def demo_keys(context) -> list:
    """Make the robot's and the edge's keys before any node starts, unless the folder has them."""
    folder = LaunchConfiguration('keys_dir').perform(context)
    names = [LaunchConfiguration('robot_id').perform(context), 'edge']
    if not all(os.path.exists(os.path.join(folder, f'{name}.key')) for name in names):
        make_keys(folder, names, force=True)
    return []


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('edge_lam')
    edge_lam = os.path.join(get_package_prefix('edge_lam'), 'lib', 'edge_lam', 'edge-lam')
    robot_id = LaunchConfiguration('robot_id')
    params = os.path.join(share, 'config', 'demo.yaml')
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'robot.launch.py')),
        launch_arguments={'robot_id': robot_id, 'params_file': params, 'model': LaunchConfiguration('model'),
                          'compute_scale': '0.5', 'memory_limit_bytes': str(320 * MIB), 'scan': 'false',
                          'keys_dir': LaunchConfiguration('keys_dir')}.items())
    edge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'edge.launch.py')),
        launch_arguments={'host_id': 'edge', 'params_file': params, 'model': LaunchConfiguration('model'),
                          'compute_scale': '1.0', 'memory_limit_bytes': str(480 * MIB),
                          'keys_dir': LaunchConfiguration('keys_dir')}.items())
    camera_replay = ExecuteProcess(
        cmd=[edge_lam, 'replay', LaunchConfiguration('camera_bag'), '--loop', '--wait-subscribers', '1',
             '--remap', ['/camera/image_raw/compressed:=/', robot_id, '/camera/image_raw/compressed'],
             '--ros-args', '-r', '__node:=image_replay'],  # the names edge-lam demo gives its replays
        output='screen')
    odometry_replay = ExecuteProcess(
        cmd=[edge_lam, 'replay', LaunchConfiguration('odometry_bag'), '--loop', '--start-offset', '25',
             '--topics', '/odom', '--wait-subscribers', '1', '--remap', ['/odom:=/', robot_id, '/odom'],
             '--ros-args', '-r', '__node:=odometry_replay'],
        output='screen')
    return LaunchDescription([
        DeclareLaunchArgument('robot_id', default_value='tb3', description='Robot id and namespace.'),
        DeclareLaunchArgument('model', default_value='smollm2-135m-instruct', description='Model id or folder.'),
        DeclareLaunchArgument('camera_bag', default_value=str(asset_dir('data', 'camera-bag', 'bag.mcap')),
                              description='Bag with /camera/image_raw/compressed (made by make setup).'),
        DeclareLaunchArgument('odometry_bag', default_value=str(asset_dir('data', 'evo', 'nav2_turtlebot.mcap')),
                              description="Bag with /odom (the TurtleBot's Nav2 run from evo)."),
        DeclareLaunchArgument('keys_dir', default_value=os.path.join(tempfile.gettempdir(), 'edge_lam_demo_keys'),
                              description='Folder of the demo hosts\' keys (made if missing; see doc/trust.md).'),
        OpaqueFunction(function=demo_keys),
        robot,
        edge,
        camera_replay,
        odometry_replay,
    ])
