"""The links between hosts: measuring them from round trips (``probing``), emulating a slower one on one machine
for benchmarks (``emulation``), and an echo node for checking DDS tensor traffic (``tensor_echo_node``)."""
