"""A transformers causal LM cut into modules (embedding, block ranges, head, projector) that run apart, what each
costs, and how the model is loaded, sampled and its sessions kept.

Pure cores: torch in, torch out, no ROS. The nodes in ``edge_lam.chain`` wrap them.
"""
