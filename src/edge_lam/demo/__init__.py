"""The main job in one command: robot and edge hosts, coordinator, encoders and the LAM on one machine."""
