"""The only code that converts between messages and values: tensors, tokens, chain packets and stage timings,
adverts and plans, training lists, sensor samples and stamps. Nodes call these and build no message fields inline.

A module here imports messages, ``edge_lam.descriptors`` and the value types of the cores it converts for; no core
imports ``wire``, so the pure cores stay free of ROS.
"""
