"""edge_lam: robots and edge PCs running large AI models together over ROS 2.

Pure cores (numpy and torch in and out) live beside the thin rclpy nodes that wrap them; the interfaces are in the
separate package ``edge_lam_msgs``.
"""
