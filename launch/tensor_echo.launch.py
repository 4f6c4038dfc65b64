"""Start the tensor echo on this host, to check a link end to end from another host."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    params = os.path.join(get_package_share_directory('edge_lam'), 'config', 'tensor_echo.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the echo node.'),
        DeclareLaunchArgument('params_file', default_value=params, description='YAML parameters of the node.'),
        Node(
            package='edge_lam',
            executable='tensor_echo',
            name='tensor_echo',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file')],
            output='screen',
        ),
    ])
