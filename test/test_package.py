"""edge_lam and edge_lam_msgs are installed the ROS 2 way: share files through the ament index, executables
where `ros2 run` looks, interfaces importable."""

from __future__ import annotations

import ast
import configparser
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory, get_packages_with_prefixes

from conftest import REPO


def entry_points() -> dict[str, str]:
    """Console script -> ``module:function``, as setup.py declares them, read from the installed egg-info rather
    than re-parsed by hand."""
    prefix = pathlib.Path(get_package_prefix("edge_lam"))
    (path,) = prefix.glob("lib/python3*/site-packages/edge_lam-*info/entry_points.txt")
    parser = configparser.ConfigParser()
    parser.read(path)
    return dict(parser["console_scripts"])


def console_scripts() -> list[str]:
    return sorted(entry_points())


def test_both_packages_are_in_the_ament_index():
    packages = get_packages_with_prefixes()
    assert "edge_lam" in packages and "edge_lam_msgs" in packages


def test_share_files_are_found_through_the_ament_index():
    share = pathlib.Path(get_package_share_directory("edge_lam"))
    assert ET.parse(share / "package.xml").getroot().findtext("name") == "edge_lam"
    for folder in ("launch", "config"):
        installed = sorted(p.name for p in (share / folder).iterdir())
        in_repo = sorted(p.name for p in (REPO / folder).iterdir())
        assert installed == in_repo, f"share/edge_lam/{folder} differs from the repository's {folder}/"
    msgs_share = pathlib.Path(get_package_share_directory("edge_lam_msgs"))
    assert (msgs_share / "msg" / "Tensor.msg").is_file()


def test_every_console_script_is_an_executable_where_ros2_run_looks():
    lib = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
    scripts = console_scripts()
    assert {"edge-lam", "tensor_echo"} <= set(scripts)
    for name in scripts:
        assert os.access(lib / name, os.X_OK), f"{lib / name} is missing or not executable"


def test_an_installed_executable_answers_help_in_a_fresh_process():
    lib = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
    result = subprocess.run([lib / "edge-lam", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "prepare" in result.stdout


def test_ros2_component_types_lists_every_component_the_host_agent_loads_by_that_name():
    """`ros2 component types` reads the rclcpp_components resource of the ament index (type;library per line) as
    ros2component's get_package_component_types does; each type names a component the container services load."""
    from ament_index_python import get_resource

    from edge_lam.container.registry import COMPONENTS
    from edge_lam.container.services import component_kind

    registry, _ = get_resource("rclcpp_components", "edge_lam")
    types = [line.split(";")[0] for line in registry.splitlines()]
    assert sorted(component_kind("edge_lam", t) for t in types) == sorted(COMPONENTS)
    assert all(t.startswith("edge_lam::") for t in types)


def test_edge_lam_is_imported_from_the_install_not_the_source_tree():
    import edge_lam

    assert pathlib.Path(edge_lam.__file__).is_relative_to(get_package_prefix("edge_lam"))
    assert sys.version_info[:2] == (3, 11)


def test_package_xml_declares_what_the_code_imports():
    root = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in root if e.tag in ("depend", "exec_depend", "build_depend")}
    imported_ros_packages = {"rclpy", "edge_lam_msgs", "ament_index_python", "launch", "launch_ros"}
    assert imported_ros_packages <= declared


def _declared_in(path: pathlib.Path) -> dict[str, ast.Call]:
    """``declare(node, "name", default, description)`` calls in a source file, and those of helpers of the same
    shape (``declare_codec(node, "name", default, what)``), by parameter name."""
    return {call.args[1].value: call for call in ast.walk(ast.parse(path.read_text()))
            if isinstance(call, ast.Call) and str(getattr(call.func, "id", "")).startswith("declare")
            and len(call.args) == 4 and isinstance(call.args[1], ast.Constant)}


def _sources_of(path: pathlib.Path) -> list[pathlib.Path]:
    """The file and, recursively, the edge_lam modules it takes parameters from: those of its base classes and of
    the ``declare_*`` functions it calls."""
    tree = ast.parse(path.read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edge_lam.")
                for alias in node.names}
    used = {base.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for base in node.bases
            if isinstance(base, ast.Name)}
    used |= {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id.startswith("declare_")}
    modules = sorted({imported[name] for name in used if name in imported})
    return [path, *(p for m in modules for p in _sources_of(REPO / "src" / (m.replace(".", "/") + ".py")))]


def declared_parameters() -> dict[str, dict[str, ast.Call]]:
    """Per executable, the parameters its node declares, read from the source (with those of its base classes, e.g.
    every encoder's EncoderNode, and of the declare_* helpers it calls)."""
    found = {}
    for executable, target in entry_points().items():
        path = REPO / "src" / (target.split(":")[0].replace(".", "/") + ".py")
        found[executable] = {name: call for source in _sources_of(path) for name, call in _declared_in(source).items()}
    return found


NODE_EXECUTABLES = {"embed_shard": "shard", "blocks_shard": "shard", "front_shard": "shard", "middle_shard": "shard",
                    "head_shard": "shard", "whole_model": "shard", "tensor_echo": "tensor_echo"}


def test_every_parameter_is_declared_with_a_description():
    for executable, parameters in declared_parameters().items():
        for name, call in parameters.items():
            description = call.args[3]
            if isinstance(description, ast.Constant):  # an f-string or a sum of strings says something too
                text = description.value
                assert isinstance(text, str) and len(text) > 10, f"{executable}: '{name}' has no description"


def test_config_files_set_only_parameters_their_nodes_declare():
    declared = declared_parameters()
    everything = set().union(*declared.values())
    for config in sorted((REPO / "config").glob("*.yaml")):
        for key, section in yaml.safe_load(config.read_text()).items():
            node = key.rsplit("/", 1)[-1]
            names = set(section["ros__parameters"])
            if node == "**":  # every node: each parameter must mean something to some node
                assert names <= everything, f"{config.name}: {sorted(names - everything)} declared by no node"
                continue
            executable = NODE_EXECUTABLES.get(node, node)
            assert executable in declared, f"{config.name}: '{key}' matches no node of this package"
            unknown = names - set(declared[executable])
            assert not unknown, f"{config.name}: {executable} declares no {sorted(unknown)}"


def test_launch_files_name_only_executables_config_files_and_parameters_that_exist():
    # `launch` is not installable here, so the files are read, not run: every Node(executable=...) must be a
    # console script of this package, every config file they name must be installed, and every parameter they set
    # must be declared by that node.
    scripts = set(console_scripts())
    declared = declared_parameters()
    config = {p.name for p in (pathlib.Path(get_package_share_directory("edge_lam")) / "config").iterdir()}
    for launch_file in sorted((REPO / "launch").glob("*.launch.py")):
        tree = ast.parse(launch_file.read_text())
        nodes = [call for call in ast.walk(tree) if isinstance(call, ast.Call)
                 and any(k.arg == "executable" for k in call.keywords)]
        named_files = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                       and n.value.endswith((".yaml", ".xml", ".launch.py"))]
        included = {p.name for p in (REPO / "launch").glob("*.launch.py")}
        assert nodes or "IncludeLaunchDescription" in launch_file.read_text(), f"{launch_file.name} starts nothing"
        assert set(named_files) <= config | included, f"{launch_file.name} names files that are not installed"
        for node in nodes:
            keywords = {k.arg: k.value for k in node.keywords}
            assert isinstance(keywords["executable"], ast.Constant), f"{launch_file.name}: executable not literal"
            executable = keywords["executable"].value
            assert executable in scripts, f"{launch_file.name} names unknown executable {executable}"
            for entry in getattr(keywords.get("parameters"), "elts", []):
                if isinstance(entry, ast.Dict):
                    names = {k.value for k in entry.keys}
                    unknown = names - set(declared[executable])
                    assert not unknown, f"{launch_file.name}: {executable} declares no {sorted(unknown)}"


def documented_parameter_tables() -> dict[str, dict[str, str]]:
    """Per executable, parameter name -> default cell, from the reference pages' tables (doc/*.md), each under a
    paragraph "Parameters of `x`...:"."""
    tables: dict[str, dict[str, str]] = {}
    owners: list[str] = []
    caption = False
    lines = [line for page in sorted((REPO / "doc").glob("*.md")) for line in ["", *page.read_text().splitlines()]]
    for line in lines:
        if line.startswith("Parameters of "):
            owners, caption = re.findall(r"`([a-z_]+)`", line), True
        elif caption and line and not line.startswith("|"):
            owners += re.findall(r"`([a-z_]+)`", line)
        elif line.startswith("| `") and owners:
            caption = False
            name, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
            for owner in owners:
                tables.setdefault(owner, {})[name.strip("`")] = default
        elif not line.startswith("|") and not caption:
            owners = []
        if not line:
            caption = False
    return tables


def test_the_reference_documents_every_parameter_of_every_node():
    documented = documented_parameter_tables()
    for executable, parameters in declared_parameters().items():
        if not parameters:
            continue
        assert executable in documented, f"doc/ has no parameter table for {executable}"
        assert set(parameters) == set(documented[executable]), (
            f"{executable}: undocumented {sorted(set(parameters) - set(documented[executable]))}, "
            f"documented but not declared {sorted(set(documented[executable]) - set(parameters))}")
        for name, call in parameters.items():
            default = call.args[2]
            if not isinstance(default, ast.Constant) or default.value != default.value:  # an expression, or NaN
                continue
            shown = {True: "true", False: "false", "": '""'}.get(default.value, default.value) \
                if isinstance(default.value, (bool, str)) else repr(default.value)
            assert documented[executable][name] == f"`{shown}`", (
                f"{executable}: doc/ says {name} defaults to {documented[executable][name]}, the code {shown}")
