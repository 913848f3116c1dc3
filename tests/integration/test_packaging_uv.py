"""Packing on demand with the uv packer against the real cluster: cache, incremental wheels,
concurrency, stale locks, killed builds, corrupt uploads, remote Python checks."""

import os
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
from remote_env import cluster_python
from uv_projects import make_uv_project

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource
from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.packaging.cache import ensure_environment
from dagster_slurm.packaging.cache_key import compute_cache_key
from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.packaging.uv_packer import UvPacker

pytestmark = pytest.mark.cluster
HERE = os.path.dirname(__file__)


@pytest.fixture
def base(transport):
    """A fresh deployment base: a cold cache for every test."""
    return transport.absolute(f"dagster-slurm-tests/pk-{uuid.uuid4().hex[:8]}")


def _asset(payload):
    @dg.asset(name="packed")
    def packed(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload)).get_results()

    return packed


def _spec_asset(payload):
    from dagster_slurm import SlurmRunConfig

    @dg.asset(name="packed")
    def packed(context: dg.AssetExecutionContext, compute: ComputeResource, config: SlurmRunConfig):
        return compute.run(context=context, payload_path=str(payload), config=config).get_results()

    return packed


def _run(ssh, base, lock, payloads, transport, run_config=None):
    slurm = SlurmResource(ssh=ssh, remote_base=base, queue=SlurmQueueConfig(mem="256M", time_limit="00:05:00"))
    compute = ComputeResource(mode="slurm", slurm=slurm, lockfile=str(lock), auto_detect_platform=True)
    before = transport.stats.snapshot()
    result = dg.materialize([_spec_asset(payloads / "trivial.py")], resources={"compute": compute},
                            run_config=run_config, raise_on_error=False)
    assert result.success, result.get_step_failure_events()
    meta = {k: v.value for k, v in result.asset_materializations_for_node("packed")[0].metadata.items()}
    return meta, transport.stats.since(before)


def test_cold_warm_and_one_dependency_change(ssh, base, payloads, transport, tmp_path):
    lock = make_uv_project(tmp_path / "p", six="1.16.0")
    cold, _ = _run(ssh, base, lock, payloads, transport)
    assert cold["slurm_env_cache_hit"] is False and cold["slurm_env_wheels_uploaded"] >= 2
    for key in ("slurm_env_pack_seconds", "slurm_env_upload_seconds", "slurm_env_unpack_seconds",
                "slurm_env_upload_bytes"):
        assert key in cold

    warm, stats = _run(ssh, base, lock, payloads, transport)
    assert warm["slurm_env_cache_hit"] is True and warm["slurm_environment"] == cold["slurm_environment"]
    assert stats.bytes_uploaded < 20_000  # the payload, env file and job script only
    assert not any("uv venv" in c for c in stats.command_log)

    lock2 = make_uv_project(tmp_path / "p", six="1.17.0")
    changed, _ = _run(ssh, base, lock2, payloads, transport)
    assert changed["slurm_env_cache_hit"] is False
    assert changed["slurm_env_wheels_uploaded"] == 1  # only six; dagster-pipes and uv are on the cluster
    assert changed["slurm_env_wheels_reused"] >= 1
    assert changed["slurm_environment"] != cold["slurm_environment"]

    forced, _ = _run(ssh, base, lock2, payloads, transport,
                     run_config={"ops": {"packed": {"config": {"force_env_push": True}}}})
    assert forced["slurm_env_cache_hit"] is False and forced["slurm_env_wheels_uploaded"] == 0


def _packer(lock, transport, **kw):
    return UvPacker(lock, "linux-64", kw.pop("python_version", None) or cluster_python(transport), **kw)


def _key(lock, packer):
    return compute_cache_key(lock.read_bytes(), packer.key_command(), packer.platform, [])


def test_eight_concurrent_cold_runs_pack_once(base, transport, tmp_path, cluster_env):
    lock = make_uv_project(tmp_path / "p")
    script = os.path.join(HERE, "ensure_env.py")
    env = {**os.environ, **cluster_env}
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, script, base, str(lock)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    results = [o[0].strip().splitlines()[-1] for o in outputs]
    assert sorted(r.split()[0] for r in results) == ["HIT"] * 7 + ["MISS"]
    assert len({r.split()[1] for r in results}) == 1  # one path for all
    assert len(transport.listdir(f"{base}/envs/.store")) == 1
    print(f"8 concurrent cold runs: {time.monotonic() - started:.1f} s")


def test_stale_lock_of_a_dead_process_is_broken(base, transport, tmp_path):
    lock = make_uv_project(tmp_path / "p")
    packer = _packer(lock, transport)
    key = _key(lock, packer)
    transport.mkdir_p(f"{base}/envs/.locks/{key}")  # left behind by a killed process
    messages = []
    result = ensure_environment(transport, RemoteLayout(base), packer, key, stale_after=1.5, log=messages.append)
    assert not result.cache_hit
    assert any("Breaking stale lock" in m for m in messages)


def test_killed_build_is_never_used(base, transport, tmp_path, cluster_env):
    lock = make_uv_project(tmp_path / "p")
    packer = _packer(lock, transport)
    key = _key(lock, packer)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ensure_env.py"), base, str(lock)],
                            env={**os.environ, **cluster_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not transport.listdir(f"{base}/envs/.store") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed mid-build: staging exists, nothing published
    proc.wait()
    assert transport.stat_size(f"{base}/envs/{key}/activate.sh") is None
    messages = []
    started = time.monotonic()  # default stale_after (60 s): the dead holder on this machine is seen at once
    result = ensure_environment(transport, RemoteLayout(base), packer, key, log=messages.append)
    assert not result.cache_hit
    assert time.monotonic() - started < 30
    assert any(f"process {proc.pid} on this machine, is gone" in m for m in messages), messages
    check = transport.run(f". {result.path}/activate.sh && python -c 'import six, dagster_pipes; print(six.__version__)'")
    assert check.stdout.strip() == "1.16.0"


def test_corrupt_wheel_upload_is_detected_and_nothing_published(base, transport, tmp_path):
    lock = make_uv_project(tmp_path / "p")

    class CorruptingPacker(UvPacker):
        def upload(self, transport, result, layout, staging, log):
            figures = super().upload(transport, result, layout, staging, log)
            wheel = result.extra["wheels"][0].name
            transport.run(f"printf garbage >> {layout.wheels}/{wheel}")  # damaged in transit
            return figures

    packer = CorruptingPacker(lock, "linux-64", cluster_python(transport))
    key = _key(lock, packer)
    with pytest.raises(DagsterSlurmError, match="checksum mismatch"):
        ensure_environment(transport, RemoteLayout(base), packer, key, log=print)
    assert transport.stat_size(f"{base}/envs/{key}") is None
    assert transport.listdir(f"{base}/envs/.store") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"remote_python": "python9.9"}, "remote python 'python9.9' was not found"),
    ({"python_version": "3.10"}, "resolved for Python 3.10"),
])
def test_remote_python_missing_or_wrong_version(base, transport, tmp_path, kwargs, message):
    lock = make_uv_project(tmp_path / "p")
    packer = _packer(lock, transport, **kwargs)
    with pytest.raises(DagsterSlurmError, match=message) as err:
        ensure_environment(transport, RemoteLayout(base), packer, _key(lock, packer), log=print)
    assert "remote_python" in str(err.value)


def test_unwritable_base_path_for_packing(ssh, payloads, transport, tmp_path):
    lock = make_uv_project(tmp_path / "p")
    slurm = SlurmResource(ssh=ssh, remote_base="readonly/base", queue=SlurmQueueConfig(mem="256M"))
    compute = ComputeResource(mode="slurm", slurm=slurm, lockfile=str(lock))
    result = dg.materialize([_asset(payloads / "trivial.py")], resources={"compute": compute}, raise_on_error=False)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "SLURM_DEPLOYMENT_BASE_PATH" in text
