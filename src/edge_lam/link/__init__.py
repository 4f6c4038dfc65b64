"""The links between hosts: measuring them from round trips (``probing``), emulating a slower host and link on one
machine for benchmarks (``emulation``, and ``delayed_release``, a node's side of it), and an echo node for checking
DDS tensor traffic (``tensor_echo_node``)."""
