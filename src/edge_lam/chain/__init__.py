"""A model chain over DDS: shard nodes that each run a run of modules, and the gateway that drives generation."""
