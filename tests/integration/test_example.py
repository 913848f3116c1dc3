"""The example pipeline of examples/ runs in both modes (what scripts/example.sh does)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_example.py"


def _run(mode: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--mode", mode], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_example_local_mode():
    out = _run("local", {**os.environ, "DAGSTER_DEPLOYMENT": ""})
    assert "All assets behaved as expected." in out
    assert "daily_counts[2026-11-24]" in out and "failed (expected)" in out


@pytest.mark.cluster
def test_example_slurm_mode_mixes_packed_and_pre_deployed(cluster_env, transport):
    base = transport.absolute("dagster-slurm-tests/example")
    out = _run("slurm", {**os.environ, **cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": base})
    assert "All assets behaved as expected." in out
    assert "'env': 'pre-deployed env'" in out and "'env': 'packed env, cache" in out
    assert "Slurm job" in out and "FAILED, exit status 2" in out
