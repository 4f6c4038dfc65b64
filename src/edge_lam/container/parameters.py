"""A component's parameters as rclpy overrides: from YAML text (``LoadModule``'s ``parameters_yaml``) or from plain
values (a plan's shard).

YAML from a caller is bounded before anything is built from it: its size, its nesting, and no anchors or aliases
(a 19-byte recursive alias loops forever, a 574-byte alias bomb expands to a million values; a parameters file never
needs them). Once those hold, building costs time linear in the bounded text, and the parameters are counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from rclpy.parameter import Parameter

__all__ = ["YamlBounds", "parameter_overrides", "yaml_parameters"]

# libyaml's parser when the wheel has it (tens of times faster than the pure-Python one); the same events either way.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlBounds:
    """What one ``parameters_yaml`` may cost: bytes of text, nesting of mappings and sequences, parameters."""

    max_bytes: int = 65_536
    max_depth: int = 8
    max_parameters: int = 256


def parameter_overrides(values: Mapping[str, object]) -> tuple[Parameter, ...]:
    return tuple(Parameter(name, value=value) for name, value in values.items())


def yaml_parameters(text: str, bounds: YamlBounds = YamlBounds()) -> list[Parameter]:
    """A YAML mapping as parameter overrides; nested mappings become dotted names, as in a parameters file.

    ValueError, saying why, for text over ``bounds``, with anchors or aliases, not YAML, or not a mapping of
    parameter values.
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > bounds.max_bytes:
        raise ValueError(f"parameters_yaml has {size} bytes, more than the {bounds.max_bytes} allowed "
                         "(host agent parameter max_parameters_yaml_bytes)")
    try:
        _check_events(text, bounds)
        values = yaml.load(text, Loader=_LOADER) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ValueError(f"parameters_yaml is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"parameters_yaml must be a mapping of parameter names to values, not {type(values).__name__}")
    parameters = []
    pending = [("", values)]
    while pending:
        prefix, mapping = pending.pop()
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                pending.append((f"{name}.", value))
                continue
            if len(parameters) == bounds.max_parameters:
                raise ValueError(f"parameters_yaml sets more than {bounds.max_parameters} parameters "
                                 "(host agent parameter max_parameters_yaml_parameters)")
            try:
                if value is None:
                    raise TypeError("no value")
                parameters.append(Parameter(name, value=value))
            except TypeError as err:
                raise ValueError(f"parameters_yaml: parameter '{name}': {err}") from None
    return parameters


def _check_events(text: str, bounds: YamlBounds) -> None:
    """Refuse anchors, aliases and nesting deeper than ``bounds.max_depth`` from the parser's events, before any
    value is built (the events of bounded text are bounded; what aliases build from them is not)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ValueError("parameters_yaml uses YAML anchors or aliases (&, *), which parameters never need")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > bounds.max_depth:
                raise ValueError(f"parameters_yaml nests deeper than {bounds.max_depth} levels "
                                 "(host agent parameter max_parameters_yaml_depth)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
