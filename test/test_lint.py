"""The code base stays ruff clean (the rules are in ruff.toml)."""

from __future__ import annotations

import shutil
import subprocess

from conftest import REPO


def test_ruff_reports_nothing():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is not installed in this environment"
    result = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
