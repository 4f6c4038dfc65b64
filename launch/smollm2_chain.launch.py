"""SmolLM2 cut into four shards in three processes and a gateway on this host, parameters from
config/smollm2_chain.yaml (embed_shard and blocks_shard composed in one process, middle_shard, head_shard).

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
    namespace = LaunchConfiguration('namespace')
    # Four shards in three processes, as config/smollm2_chain.yaml lays them out: the embedding and the first blocks
    # share one (compose; named by its arguments, so no name= here), then one process each for the other two.
    shards = [
        Node(package='edge_lam', executable='compose', arguments=['shard:embed_shard', 'shard:blocks_shard'],
             namespace=namespace, parameters=common, output='screen'),
        *(Node(package='edge_lam', executable='shard', name=name, namespace=namespace, parameters=common,
               output='screen') for name in ('middle_shard', 'head_shard')),
    ]
    gateway = Node(package='edge_lam', executable='gateway', name='gateway',
                   namespace=namespace, parameters=[LaunchConfiguration('params_file')],
                   output='screen')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the chain and gateway.'),
        DeclareLaunchArgument('params_file', default_value=params, description='YAML parameters of the nodes.'),
        DeclareLaunchArgument('wire_dtype', default_value='float16',
                              description='Hidden states on the wire: float16, bfloat16 or float32 (exact).'),
        *shards,
        gateway,
    ])
