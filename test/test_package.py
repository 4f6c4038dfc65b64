"""edge_lam and edge_lam_msgs are installed the ROS 2 way: share files through the ament index, executables
where `ros2 run` looks, interfaces importable."""

from __future__ import annotations

import configparser
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

from ament_index_python.packages import get_package_prefix, get_package_share_directory, get_packages_with_prefixes

from conftest import REPO


def console_scripts() -> list[str]:
    """The console scripts setup.py declares, read from the installed egg-info rather than re-parsed by hand."""
    prefix = pathlib.Path(get_package_prefix("edge_lam"))
    (entry_points,) = prefix.glob("lib/python3*/site-packages/edge_lam-*info/entry_points.txt")
    parser = configparser.ConfigParser()
    parser.read(entry_points)
    return sorted(parser["console_scripts"])


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


def test_edge_lam_is_imported_from_the_install_not_the_source_tree():
    import edge_lam

    assert pathlib.Path(edge_lam.__file__).is_relative_to(get_package_prefix("edge_lam"))
    assert sys.version_info[:2] == (3, 11)


def test_package_xml_declares_what_the_code_imports():
    root = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in root if e.tag in ("depend", "exec_depend", "build_depend")}
    imported_ros_packages = {"rclpy", "edge_lam_msgs", "ament_index_python", "launch", "launch_ros"}
    assert imported_ros_packages <= declared


def test_launch_files_name_only_executables_and_config_files_that_exist():
    # `launch` is not installable here, so the files are read, not run: every Node(executable=...) must be a
    # console script of this package and every config file they name must be installed.
    import ast

    scripts = set(console_scripts())
    config = {p.name for p in (pathlib.Path(get_package_share_directory("edge_lam")) / "config").iterdir()}
    for launch_file in sorted((REPO / "launch").glob("*.launch.py")):
        tree = ast.parse(launch_file.read_text())
        executables = [k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                       for k in n.keywords if k.arg == "executable" and isinstance(k.value, ast.Constant)]
        named_files = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                       and n.value.endswith((".yaml", ".xml"))]
        assert executables, f"{launch_file.name} starts no node"
        assert set(executables) <= scripts, f"{launch_file.name} names unknown executables"
        assert set(named_files) <= config, f"{launch_file.name} names config files that are not installed"
