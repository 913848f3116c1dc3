"""dagster-slurm env list / gc on the real cluster: a leased environment survives while its job runs."""

import os
import signal
import subprocess
import uuid

import pytest
from remote_env import cluster_python
from uv_projects import make_uv_project

from dagster_slurm.cli.main import main
from dagster_slurm.packaging.cache import ensure_environment
from dagster_slurm.packaging.cache_key import compute_cache_key
from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.packaging.uv_packer import UvPacker

pytestmark = pytest.mark.cluster


def test_gc_keeps_environments_of_queued_or_running_jobs(transport, cluster_env, tmp_path, monkeypatch, capsys):
    base = transport.absolute(f"dagster-slurm-tests/gc-{uuid.uuid4().hex[:8]}")
    layout = RemoteLayout(base)
    paths = []
    for six in ("1.16.0", "1.17.0"):
        lock = make_uv_project(tmp_path / six, six=six)
        packer = UvPacker(lock, "linux-64", cluster_python(transport))
        key = compute_cache_key(lock.read_bytes(), packer.key_command(), packer.platform, [])
        paths.append(ensure_environment(transport, layout, packer, key, log=print).path)
    leased, idle = paths
    # the lease belongs to a colleague's job on a shared base: submitted by another user (root, here)
    job_id = subprocess.run(["sbatch", "--parsable", "--mem=64M", "-o", "/dev/null", "--wrap", "sleep 120"],
                            cwd="/tmp", capture_output=True, text=True, check=True).stdout.strip()
    transport.run(f"touch {leased}/.leases/{job_id}")  # what a submitted run records
    for key, value in {**cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": base}.items():
        monkeypatch.setenv(key, value)
    try:
        assert main(["env", "list"]) == 0
        listing = capsys.readouterr().out
        assert "2 environment(s)" in listing and "envs/" in listing

        assert main(["env", "gc", "--keep", "0", "--older-than", "0s", "--dry-run"]) == 0
        assert "1 environment(s) to delete" in capsys.readouterr().out
        assert transport.stat_size(f"{idle}/activate.sh") is not None  # dry run deletes nothing

        assert main(["env", "gc", "--keep", "0", "--older-than", "0s"]) == 0
        assert transport.stat_size(f"{leased}/activate.sh") is not None  # its job is running
        assert transport.stat_size(f"{idle}/activate.sh") is None
        assert transport.stat_size(idle) is None  # the name is gone too, not left dangling
        wheels = transport.listdir(f"{base}/wheels")
        assert "six-1.16.0-py2.py3-none-any.whl" in wheels  # still used by the leased environment
        # six 1.17's wheel is unused now but younger than the grace period (a build may be using it)
        assert "six-1.17.0-py2.py3-none-any.whl" in wheels
    finally:
        subprocess.run(["scancel", job_id], check=False)
    transport.run(f"while squeue -h -j {job_id} -t PD,R,CG 2>/dev/null | grep -q .; do sleep 0.2; done", timeout=60)
    assert main(["env", "gc", "--keep", "0", "--older-than", "0s"]) == 0
    assert transport.stat_size(f"{leased}/activate.sh") is None
    # shared wheels and the uv binary go once no environment uses them and they are past the grace period
    transport.run(f"touch -d '2 hours ago' {base}/wheels/* {base}/tools/*")
    assert main(["env", "gc", "--keep", "0", "--older-than", "0s"]) == 0
    assert transport.listdir(f"{base}/wheels") == [] and transport.listdir(f"{base}/tools") == []


def test_gc_deletes_nothing_when_squeue_fails(transport, cluster_env, tmp_path, monkeypatch, capsys):
    """slurmctld stopped by its pid: squeue cannot say which leases are live, so gc aborts."""
    from conftest import CLUSTER_SCRIPT

    base = transport.absolute(f"dagster-slurm-tests/gc-{uuid.uuid4().hex[:8]}")
    lock = make_uv_project(tmp_path / "p", six="1.16.0")
    packer = UvPacker(lock, "linux-64", cluster_python(transport))
    key = compute_cache_key(lock.read_bytes(), packer.key_command(), packer.platform, [])
    env = ensure_environment(transport, RemoteLayout(base), packer, key, log=print).path
    transport.run(f"touch {env}/.leases/999999")
    for name, value in {**cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": base}.items():
        monkeypatch.setenv(name, value)
    with open("/run/slurmctld.pid") as fh:
        os.kill(int(fh.read().strip()), signal.SIGTERM)
    try:
        assert main(["env", "gc", "--keep", "0", "--older-than", "0s"]) == 2
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "start"], check=True, capture_output=True, timeout=300)
    assert "squeue failed" in capsys.readouterr().err
    assert transport.stat_size(f"{env}/activate.sh") is not None


def test_runs_gc_deletes_old_finished_run_folders_only(transport, cluster_env, ssh, pipes_env, payloads,
                                                        monkeypatch, capsys):
    import dagster as dg

    from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource

    base = transport.absolute(f"dagster-slurm-tests/runs-gc-{uuid.uuid4().hex[:8]}")
    slurm = SlurmResource(ssh=ssh, remote_base=base, queue=SlurmQueueConfig(mem="128M", time_limit="00:05:00"))

    @dg.asset
    def failing(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "fails.py")).get_results()

    result = dg.materialize([failing], resources={"compute": ComputeResource(
        mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)}, raise_on_error=False)
    assert not result.success
    failed_root = f"{base}/runs/{result.run_id}"
    assert transport.listdir(failed_root)  # kept for debugging
    # a step call whose job still runs: its folder must survive whatever its age
    job_id = transport.run("sbatch --parsable --mem=64M -o /dev/null --wrap 'sleep 120'").stdout.strip()
    live = f"{base}/runs/other-run/live-step-0123"
    transport.run(f"mkdir -p {live} && printf '{{\"n\":0,\"job_id\":\"{job_id}\"}}\\n' > {live}/ledger.jsonl")
    transport.run(f"find {base}/runs -exec touch -d '2 days ago' {{}} +")
    for key, value in {**cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": base}.items():
        monkeypatch.setenv(key, value)
    try:
        assert main(["runs", "gc", "--older-than", "1d", "--dry-run"]) == 0
        assert "1 run folder(s) to delete, 1 kept" in capsys.readouterr().out
        assert transport.listdir(failed_root)
        assert main(["runs", "gc", "--older-than", "1d"]) == 0
        assert "1 run folder(s) deleted, 1 kept" in capsys.readouterr().out
        assert transport.stat_size(failed_root) is None  # the folder and its emptied run folder
        assert transport.stat_size(f"{live}/ledger.jsonl") is not None
    finally:
        transport.run(f"scancel {job_id}", check=False)
