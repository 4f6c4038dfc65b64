"""Emulated hosts: network namespaces joined through a bridge by a user-space forwarder that shapes each host's
link (latency, jitter, rate, loss, cut), so processes on one machine talk as hosts on a network do."""

from edge_lam.hosts.emulated import EmulatedHosts, default_prefix, down_prefix
from edge_lam.hosts.links import HostLink, LinkShape, LinkSpecError, compose, format_link_spec, parse_link_spec
from edge_lam.hosts.netns import NEEDS_ROOT, Counters, HostsError, NeedsRootError, has_rights
from edge_lam.hosts.topology import HostSet, TopologyError

__all__ = ["NEEDS_ROOT", "Counters", "EmulatedHosts", "HostLink", "HostSet", "HostsError", "LinkShape",
           "LinkSpecError", "NeedsRootError", "TopologyError", "compose", "default_prefix", "down_prefix",
           "format_link_spec", "has_rights", "parse_link_spec"]
