"""Make small real uv projects (pyproject + uv.lock) for packaging tests."""

import subprocess
from pathlib import Path

from uv import find_uv_bin

PYPROJECT = """\
[project]
name = "uv-payload-env"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = ["dagster-pipes>=1.13,<1.14", "six=={six}"]

[tool.uv]
package = false
"""


def make_uv_project(folder: Path, six: str = "1.16.0") -> Path:
    """A uv project whose lock pins dagster-pipes and six; returns the uv.lock path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(six=six))
    subprocess.run([find_uv_bin(), "lock", "--quiet", "--project", str(folder)], check=True, timeout=300)
    return folder / "uv.lock"
