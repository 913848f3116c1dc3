"""Helpers shared by the benchmarks."""

import hashlib
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_cluster_env() -> None:
    """Start the test cluster if needed and export its connection settings (key auth only)."""
    script = str(ROOT / "scripts" / "testcluster.sh")
    if subprocess.run([script, "status"], capture_output=True, check=False).returncode != 0:
        print("starting the test cluster ...", file=sys.stderr)
        subprocess.run([script, "start"], check=True)
    text = subprocess.run([script, "env"], capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = shlex.split(value)[0] if value else ""
    os.environ.pop("SLURM_EDGE_NODE_PASSWORD", None)


def src_fingerprint() -> str:
    """Hash of the library source the children import, to notice edits made during a run."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def med(values):
    """Median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
