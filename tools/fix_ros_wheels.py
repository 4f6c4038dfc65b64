"""Rewrite the build-machine paths that the ROS 2 wheels bake into their exported CMake files.

The message wheels were built under /opt/python/cp311-cp311 and name that machine's Python and numpy include
folders in ``*__rosidl_generator_pyExport.cmake``; CMake refuses to configure a package that depends on them
until those paths exist. We point them at this environment's folders instead. Idempotent.
"""

from __future__ import annotations

import pathlib
import re
import sys
import sysconfig

import numpy

BUILD_PYTHON_INCLUDE = re.compile(r"/opt/python/[^/;\"]+/include/python3\.\d+")
BUILD_NUMPY_INCLUDE = re.compile(r"/opt/python/[^;\"]*?/site-packages/numpy/(?:_core|core)/include")


def fix_exports(prefix: pathlib.Path) -> list[pathlib.Path]:
    """Rewrite every generator export under ``prefix/share``; return the files changed."""
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = []
    for path in sorted(prefix.glob("share/*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        fixed = BUILD_NUMPY_INCLUDE.sub(numpy_include, text)
        fixed = BUILD_PYTHON_INCLUDE.sub(python_include, fixed)
        if fixed != text:
            path.write_text(fixed)
            changed.append(path)
    return changed


def main() -> int:
    prefix = pathlib.Path(sys.prefix)
    changed = fix_exports(prefix)
    print(f"fix_ros_wheels: {len(changed)} CMake export file(s) rewritten under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
