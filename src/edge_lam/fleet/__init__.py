"""The fleet: a host agent on every machine, and a coordinator that places the model's modules on them.

A host agent is the Python component container of edge_lam (rclpy has none): it measures its host (reference
compute, memory, load net of its own work, links to the other agents), advertises it, runs the shards the placement
plan gives its host, and loads or unloads components on request. The coordinator collects the adverts, places the
modules and publishes the plan. Pure cores (``host_measurement``: reference compute, CPU load and memory;
``plan_following``: which plans to follow and which shards to load, keep or unload; ``coordination``: the
coordinator's decisions; link estimates are ``link.probing``'s) sit under thin nodes, so that every decision is
testable without ROS; the agent hosts its components through ``edge_lam.container``.
"""
