"""Where the modules of a model chain run: an exact placement solver over hosts and links, and host measurement.

Pure cores (numpy and dataclasses in, plans out, no ROS), so the coordinator's decisions can be tested alone and
the benchmarks can price any placement, not only the chosen one. The coordinator and host agent nodes translate
ComputeAdvert / PlacementPlan messages to and from these types.
"""
