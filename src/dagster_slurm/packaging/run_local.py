"""Run a local build command with a bound, and turn failure into a clear error."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from dagster_slurm.errors import ConfigurationError, tail


def run_build_command(cmd: Sequence[str], cwd: Path, setting: str, timeout: float = 3600,
                      env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise ConfigurationError(
            f"{setting}: the command {cmd[0]!r} is not installed or not on PATH (command: {' '.join(cmd)})."
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigurationError(f"{setting}: `{' '.join(cmd)}` did not finish within {timeout:g} s.") from None
    if proc.returncode != 0:
        raise ConfigurationError(
            f"{setting}: `{' '.join(cmd)}` failed with exit code {proc.returncode} (in {cwd}).\n"
            f"stderr (tail):\n{tail(proc.stderr or proc.stdout)}"
        )
    return proc
