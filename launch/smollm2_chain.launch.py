"""SmolLM2 cut into three shard processes and a gateway on this host, parameters from config/smollm2_chain.yaml.

    ros2 launch edge_lam smollm2_chain.launch.py wire_dtype:=float32
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    params = os.path.join(get_package_share_directory('edge_lam'), 'config', 'smollm2_chain.yaml')
    common = [LaunchConfiguration('params_file'), {'wire_dtype': LaunchConfiguration('wire_dtype')}]
    shards = [
        Node(package='edge_lam', executable='shard', name=name, namespace=LaunchConfiguration('namespace'),
             parameters=common, output='screen')
        for name in ('embed_shard', 'blocks_shard', 'middle_shard', 'head_shard')
    ]
    gateway = Node(package='edge_lam', executable='gateway', name='gateway',
                   namespace=LaunchConfiguration('namespace'), parameters=[LaunchConfiguration('params_file')],
                   output='screen')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the chain and gateway.'),
        DeclareLaunchArgument('params_file', default_value=params, description='YAML parameters of the nodes.'),
        DeclareLaunchArgument('wire_dtype', default_value='float16',
                              description='Hidden states on the wire: float16, bfloat16 or float32 (exact).'),
        *shards,
        gateway,
    ])
