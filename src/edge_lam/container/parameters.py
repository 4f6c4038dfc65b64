"""A component's parameters as rclpy overrides: from YAML text (``LoadModule``'s ``parameters_yaml``) or from plain
values (a plan's shard)."""

from __future__ import annotations

from collections.abc import Mapping

import yaml
from rclpy.parameter import Parameter

__all__ = ["parameter_overrides", "yaml_parameters"]


def parameter_overrides(values: Mapping[str, object]) -> tuple[Parameter, ...]:
    return tuple(Parameter(name, value=value) for name, value in values.items())


def yaml_parameters(text: str) -> list[Parameter]:
    """A YAML mapping as parameter overrides; nested mappings become dotted names, as in a parameters file."""
    try:
        values = yaml.safe_load(text) if text.strip() else {}
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
            try:
                if value is None:
                    raise TypeError("no value")
                parameters.append(Parameter(name, value=value))
            except TypeError as err:
                raise ValueError(f"parameters_yaml: parameter '{name}': {err}") from None
    return parameters
