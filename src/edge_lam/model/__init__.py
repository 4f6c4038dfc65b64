"""A transformers causal LM cut into modules (embedding, block ranges, head, projector) that run apart.

Pure cores: torch in, torch out, no ROS. The nodes in ``edge_lam.chain`` wrap them.
"""
