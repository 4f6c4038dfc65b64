"""Checks of the DDS link between hosts: an echo of Tensor traffic."""
