"""Terminate cancels the job; a killed orchestrator does not; a retried step reattaches instead of resubmitting."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.cluster

HERE = os.path.dirname(__file__)


def _start(cluster_env, remote_base, pipes_env, run_id, seconds):
    env = {**os.environ, **cluster_env, "TEST_REMOTE_BASE": remote_base, "TEST_ENV": pipes_env}
    return subprocess.Popen([sys.executable, os.path.join(HERE, "run_sleeper.py"), run_id, str(seconds)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job_id(transport, remote_base, run_id, timeout=60) -> str:
    path = f"{remote_base}/runs/{run_id}/sleeper-r0/job_id"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = transport.read_from(path)
        if data and data.strip():
            return data.decode().strip()
        time.sleep(0.2)
    raise AssertionError(f"no job was submitted within {timeout} s")


def _wait_state(transport, job_id, states, timeout=60) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = transport.run(f"sacct -X -n -P -o State -j {job_id}").stdout.strip()
        if state.split(" ")[0] in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {state!r}, expected one of {states}")


def test_terminate_cancels_the_job(cluster_env, transport, remote_base, pipes_env):
    run_id = str(uuid.uuid4())
    proc = _start(cluster_env, remote_base, pipes_env, run_id, 120)
    job_id = _job_id(transport, remote_base, run_id)
    _wait_state(transport, job_id, {"RUNNING"})
    proc.send_signal(signal.SIGINT)  # what Dagster's run termination delivers to the step process
    out, _ = proc.communicate(timeout=60)
    assert "cancelling Slurm job" in out, out[-3000:]
    assert _wait_state(transport, job_id, {"CANCELLED"}).startswith("CANCELLED")


def test_killed_orchestrator_leaves_job_and_retry_reattaches(cluster_env, transport, remote_base, pipes_env):
    run_id = str(uuid.uuid4())
    first = _start(cluster_env, remote_base, pipes_env, run_id, 6)
    job_id = _job_id(transport, remote_base, run_id)
    _wait_state(transport, job_id, {"RUNNING"})
    first.kill()  # the orchestrator dies without terminating the run
    first.communicate(timeout=30)
    time.sleep(1)
    assert _wait_state(transport, job_id, {"RUNNING", "COMPLETED"}) in ("RUNNING", "COMPLETED")

    second = _start(cluster_env, remote_base, pipes_env, run_id, 6)
    out, _ = second.communicate(timeout=120)
    assert f"Reattaching to Slurm job {job_id}" in out, out[-3000:]
    assert "Submitted Slurm job" not in out
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    assert _wait_state(transport, job_id, {"COMPLETED"}) == "COMPLETED"


def test_dropped_ssh_connection_is_reopened_and_the_run_finishes(slurm, pipes_env, payloads):
    """Kill the sshd processes serving the test user mid-run: the run reconnects and succeeds."""
    import threading

    import dagster as dg

    from dagster_slurm import ComputeResource
    from dagster_slurm.transport import get_transport

    transport = get_transport(slurm.ssh.settings())  # the one the run below uses

    @dg.asset
    def sleeper(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "sleeps.py"),
                           extras={"seconds": 4}).get_results()

    connections_before = transport.stats.connections

    def drop_connection():
        time.sleep(2.0)  # the job is running by now
        subprocess.run(["pkill", "-KILL", "-u", "slurmuser", "-x", "sshd"], check=False)

    killer = threading.Thread(target=drop_connection)
    killer.start()
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([sleeper], resources={"compute": compute}, raise_on_error=False)
    killer.join()
    assert result.success, [e.step_failure_data.error.message for e in result.get_step_failure_events()]
    assert result.asset_materializations_for_node("sleeper")[0].metadata["slept"].value == 4
    assert transport.stats.connections > connections_before  # it did reconnect
