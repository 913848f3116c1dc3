"""Shared fixtures. Integration tests use the real test cluster of scripts/testcluster.sh.

Outside CI a cluster that cannot start skips the integration tests; under CI=true it fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CLUSTER_SCRIPT = ROOT / "scripts" / "testcluster.sh"

# The suite's own connection agents: a private folder for this session (inherited by every process the
# tests start), and every agent in it stopped at the end, so no agent of the suite outlives it.
import tempfile  # noqa: E402

if not os.environ.get("DAGSTER_SLURM_SUITE_RUNTIME_DIR"):  # once, even if a test imports this module again
    os.environ["DAGSTER_SLURM_SUITE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="dsa-suite-", dir="/tmp")
os.environ["DAGSTER_SLURM_RUNTIME_DIR"] = os.environ["DAGSTER_SLURM_SUITE_RUNTIME_DIR"]


def pytest_sessionfinish(session, exitstatus):
    subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "agent", "stop"], capture_output=True,
                   timeout=60)
    import shutil

    shutil.rmtree(os.environ["DAGSTER_SLURM_RUNTIME_DIR"], ignore_errors=True)


def _parse_exports(text: str) -> dict[str, str]:
    import shlex

    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    """Start (idempotently) the local Slurm + SSH test cluster; return its connection settings."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    proc = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        message = f"test cluster did not start (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    env = _parse_exports(subprocess.run([str(CLUSTER_SCRIPT), "env"], capture_output=True, text=True,
                                        check=True).stdout)
    return env


@pytest.fixture(scope="session")
def ssh(cluster_env):
    from dagster_slurm import SSHConnectionResource

    return SSHConnectionResource(
        host=cluster_env["SLURM_EDGE_NODE_HOST"],
        port=int(cluster_env["SLURM_EDGE_NODE_PORT"]),
        user=cluster_env["SLURM_EDGE_NODE_USER"],
        key_path=cluster_env["SLURM_EDGE_NODE_KEY_PATH"],
        known_hosts_file=cluster_env["TESTCLUSTER_KNOWN_HOSTS"],
        connect_timeout=10,
    )


@pytest.fixture(scope="session")
def transport(ssh):
    from dagster_slurm.agent import transport_for as get_transport

    return get_transport(ssh.settings())


@pytest.fixture(scope="session")
def remote_base(transport) -> str:
    return transport.absolute("dagster-slurm-tests")


@pytest.fixture(scope="session")
def pipes_env(transport) -> str:
    """A pre-deployed environment (activate.sh + env/) on the cluster with dagster-pipes."""
    from remote_env import make_pipes_env

    return make_pipes_env(transport, "dagster-slurm-tests/envs/pipes")


@pytest.fixture
def slurm(ssh, remote_base):
    from dagster_slurm import SlurmQueueConfig, SlurmResource

    return SlurmResource(ssh=ssh, remote_base=remote_base,
                         queue=SlurmQueueConfig(mem="256M", time_limit="00:05:00"))


PAYLOADS = ROOT / "tests" / "payloads"


@pytest.fixture
def payloads() -> Path:
    return PAYLOADS


SBATCH_WRAPPER = "/usr/local/bin/sbatch"  # before /usr/bin on the cluster user's PATH (the cluster is this machine)
SBATCH_MARKER = "/tmp/dagster-slurm-test-sbatch-answered"
from faults import SSHD_CONNECTION  # noqa: E402

SSH_CUT_MARKER = "/tmp/dagster-slurm-test-ssh-cut"  # pkill's status when the wrapper cut the connections (0: cut)


@pytest.fixture
def misbehaving_sbatch(cluster_env):
    """An sbatch on the cluster's PATH that misbehaves for job scripts naming a marker, like a login node
    whose sbatch answer gets lost: ``sbatch_hangs_`` submits, prints the job id and hangs;
    ``sbatch_cuts_`` submits, then cuts the user's SSH connections and hangs; ``sbatch_orphans_``
    submits, touches SBATCH_MARKER and hangs (the test kills the orchestrator then); ``sbatch_never_``
    touches SBATCH_MARKER and hangs without submitting. Other jobs go straight to Slurm's sbatch."""
    script = f"""#!/bin/sh
case "$1" in --test-only) exec /usr/bin/sbatch "$@" ;; esac  # the start estimate: not what these tests break
case "$(cat job.sh 2>/dev/null)" in
  *sbatch_never_*) : > {SBATCH_MARKER}; exec sleep 600 ;;
esac
out=$(/usr/bin/sbatch "$@") || exit $?
echo "$out"
case "$(cat job.sh 2>/dev/null)" in
  *sbatch_hangs_*) exec sleep 600 ;;
  *sbatch_cuts_*) pkill -KILL -u "$(id -un)" -x '{SSHD_CONNECTION}'; echo $? > {SSH_CUT_MARKER}; exec sleep 600 ;;
  *sbatch_orphans_*) : > {SBATCH_MARKER}; exec sleep 600 ;;
esac
"""
    class Wrapper:
        marker = SBATCH_MARKER
        cut_marker = SSH_CUT_MARKER

        @staticmethod
        def remove() -> None:
            for path in (SBATCH_WRAPPER, SBATCH_MARKER, SSH_CUT_MARKER):
                if os.path.exists(path):
                    os.remove(path)

    Wrapper.remove()
    with open(SBATCH_WRAPPER, "w") as fh:
        fh.write(script)
    os.chmod(SBATCH_WRAPPER, 0o755)
    try:
        yield Wrapper
    finally:
        Wrapper.remove()
