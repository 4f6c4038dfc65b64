"""Where the modules of a model chain run: the values (``types``), an exact solver over hosts and links
(``solver``), when to move (``policy``), and the plan's modules with their topics (``assignments``).

Pure cores (numpy and dataclasses in, plans out, no ROS), so the coordinator's decisions can be tested alone and
the benchmarks can price any placement, not only the chosen one. ``edge_lam.wire.fleet`` converts to and from
ComputeAdvert / PlacementPlan messages.
"""
