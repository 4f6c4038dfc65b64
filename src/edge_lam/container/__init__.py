"""edge_lam's component container (rclpy has none): the registry of component kinds, the loader that builds them
off the executor and keeps account of what runs, YAML parameters of load requests, the standard container services
(``ros2 component``), and the ``compose`` executable that runs several components in one process."""
