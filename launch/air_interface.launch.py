"""The air-interface example: CSI windows from the prepared channel set, their tokens, and channel prediction with
beam selection.

    ros2 launch edge_lam air_interface.launch.py predictor:=ar model_path:=/path/to/ar.safetensors

``csi_source`` publishes the test split's windows (noisy estimates) on ``/<namespace>/csi``; ``csi_encoder``
answers each with tokens on ``tokens/csi``, ``channel_predictor`` with a ``ChannelPrediction`` on
``csi/prediction``. Point a real base station's estimates at ``csi`` instead with ``source:=false``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    params_default = os.path.join(get_package_share_directory('edge_lam'), 'config', 'air_interface.yaml')
    namespace = LaunchConfiguration('namespace')
    params = LaunchConfiguration('params_file')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='air', description='Namespace of the three nodes.'),
        DeclareLaunchArgument('params_file', default_value=params_default, description='YAML parameters.'),
        DeclareLaunchArgument('predictor', default_value='last', description='last, ar, gru or lam.'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='The saved predictor file (ar, gru, lam); empty for last.'),
        DeclareLaunchArgument('source', default_value='true',
                              description='Start csi_source (false: CSI comes from elsewhere).'),
        Node(package='edge_lam', executable='csi_source', name='csi_source', namespace=namespace,
             parameters=[params], output='screen', condition=IfCondition(LaunchConfiguration('source'))),
        Node(package='edge_lam', executable='csi_encoder', name='csi_encoder', namespace=namespace,
             parameters=[params], output='screen'),
        Node(package='edge_lam', executable='channel_predictor', name='channel_predictor', namespace=namespace,
             parameters=[params, {'predictor': LaunchConfiguration('predictor'),
                                  'model_path': LaunchConfiguration('model_path')}], output='screen'),
    ])
