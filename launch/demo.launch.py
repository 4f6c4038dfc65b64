"""The demo on one machine with a ROS install: a robot and an edge host, the bundled bags replayed into the robot.

    ros2 launch edge_lam demo.launch.py

The same graph as ``edge-lam demo`` (which also prints the reports with their latency breakdown and writes a
summary and plots): robot.launch.py and edge.launch.py with config/demo.yaml, the robot at half the edge's compute,
each offering too little memory for the whole model so that the coordinator splits it, and the camera and odometry
bags replayed in a loop under ``/<robot_id>``. Watch ``/<robot_id>/reports`` and ``/edge_lam/plan``.
"""

import os

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from edge_lam.assets.cache import asset_dir

MIB = 2**20


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('edge_lam')
    edge_lam = os.path.join(get_package_prefix('edge_lam'), 'lib', 'edge_lam', 'edge-lam')
    robot_id = LaunchConfiguration('robot_id')
    params = os.path.join(share, 'config', 'demo.yaml')
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'robot.launch.py')),
        launch_arguments={'robot_id': robot_id, 'params_file': params, 'model': LaunchConfiguration('model'),
                          'compute_scale': '0.5', 'memory_limit_bytes': str(320 * MIB), 'scan': 'false'}.items())
    edge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'edge.launch.py')),
        launch_arguments={'host_id': 'edge', 'params_file': params, 'model': LaunchConfiguration('model'),
                          'compute_scale': '1.0', 'memory_limit_bytes': str(480 * MIB)}.items())
    camera_replay = ExecuteProcess(
        cmd=[edge_lam, 'replay', LaunchConfiguration('camera_bag'), '--loop', '--wait-subscribers', '1',
             '--remap', ['/camera/image_raw/compressed:=/', robot_id, '/camera/image_raw/compressed']],
        output='screen')
    odometry_replay = ExecuteProcess(
        cmd=[edge_lam, 'replay', LaunchConfiguration('odometry_bag'), '--loop', '--start-offset', '25',
             '--topics', '/odom', '--wait-subscribers', '1', '--remap', ['/odom:=/', robot_id, '/odom']],
        output='screen')
    return LaunchDescription([
        DeclareLaunchArgument('robot_id', default_value='tb3', description='Robot id and namespace.'),
        DeclareLaunchArgument('model', default_value='smollm2-135m-instruct', description='Model id or folder.'),
        DeclareLaunchArgument('camera_bag', default_value=str(asset_dir('data', 'camera-bag', 'bag.mcap')),
                              description='Bag with /camera/image_raw/compressed (made by make setup).'),
        DeclareLaunchArgument('odometry_bag', default_value=str(asset_dir('data', 'evo', 'nav2_turtlebot.mcap')),
                              description="Bag with /odom (the TurtleBot's Nav2 run from evo)."),
        robot,
        edge,
        camera_replay,
        odometry_replay,
    ])
