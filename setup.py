from glob import glob

from setuptools import find_packages, setup

package_name = 'edge_lam'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages('src'),
    package_dir={'': 'src'},
    package_data={'edge_lam': ['encoders/data/*', 'training/data/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        # `ros2 component types` lists these (type;Python class): the host agent's container loads them by name
        ('share/ament_index/resource_index/rclcpp_components', ['resource/rclcpp_components/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='edge_lam developers',
    maintainer_email='edge-lam@example.org',
    description='Robots and edge PCs running large AI models together over ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'edge-lam = edge_lam.cli:main',
            'tensor_echo = edge_lam.link.tensor_echo_node:main',
            'shard = edge_lam.chain.shard_node:main',
            'gateway = edge_lam.chain.gateway_node:main',
            'compose = edge_lam.container.compose:main',
            'camera_encoder = edge_lam.encoders.camera_node:main',
            'odometry_encoder = edge_lam.encoders.motion_node:odometry_main',
            'imu_encoder = edge_lam.encoders.motion_node:imu_main',
            'scan_encoder = edge_lam.encoders.scan_node:main',
            'text_encoder = edge_lam.encoders.text_node:main',
            'csi_encoder = edge_lam.air.csi_encoder_node:main',
            'channel_predictor = edge_lam.air.channel_predictor_node:main',
            'csi_source = edge_lam.air.csi_source_node:main',
            'reporter = edge_lam.reporting.reporter_node:main',
            'coordinator = edge_lam.fleet.coordinator_node:main',
            'host_agent = edge_lam.fleet.host_agent_node:main',
            'robot_trainer = edge_lam.training.robot_trainer_node:main',
            'edge_trainer = edge_lam.training.edge_trainer_node:main',
        ],
    },
)
