"""Shared allocations on the real test cluster: many assets' payloads run as steps of one Slurm job.

sacct is the witness: the steps' own lines (JobID <job>.<step>, named after the step) and the jobs of the
last two hours. Orchestrators are real processes (allocation_job.py: a DagsterInstance on disk, the
multiprocess executor), killed with SIGKILL or terminated with SIGINT as Dagster does.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SlurmAllocation
from tests.integration.test_lifecycle import SLEEPS, Orchestrator

pytestmark = pytest.mark.cluster


def sacct_rows(transport) -> list[dict[str, str]]:
    out = transport.run("sacct -n -P -S now-2hours -o JobID,JobName,State,Start,End", retry=True).stdout
    return [dict(zip(("id", "name", "state", "start", "end"), line.split("|"), strict=False))
            for line in out.splitlines() if line.count("|") == 4]


def steps_of(transport, prefix: str) -> list[dict[str, str]]:
    """The step lines of this test's assets (named dagster-<prefix>_<i>-<suffix>)."""
    return [r for r in sacct_rows(transport) if "." in r["id"] and r["name"].startswith(f"dagster-{prefix}_")]


def running_step(transport, prefix: str) -> str | None:
    """The id of a running step of this test's assets, from squeue --steps (sacct's step line may lag)."""
    out = transport.run("squeue -h -s -o '%i|%j'", retry=True).stdout
    return next((line.split("|")[0] for line in out.splitlines()
                 if line.split("|")[-1].startswith(f"dagster-{prefix}_")), None)


def jobs_of(transport, prefix: str) -> list[dict[str, str]]:
    """Jobs (not steps) of this test's assets: there must be none."""
    return [r for r in sacct_rows(transport) if "." not in r["id"] and r["name"].startswith(f"dagster-{prefix}_")]


def job_state(transport, job_id: str) -> str:
    out = transport.run(f"sacct -X -n -P -o State -j {job_id}", retry=True).stdout.strip()
    return out.split()[0] if out else ""


def wait_until(what, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def orchestrator(cluster_env, remote_base, pipes_env, tmp_path):
    made = []

    def make(**env) -> Orchestrator:
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        env = {"TEST_N": "3", "TEST_SHAPE": "chain", "TEST_SCOPE": "run", **{k: str(v) for k, v in env.items()}}
        made.append(Orchestrator(cluster_env, remote_base, pipes_env, home, prefix="alloc",
                                 script="allocation_job.py", seconds=float(env.pop("seconds", 2)), **env))
        return made[-1]

    return make


@pytest.mark.parametrize("shape", ["chain", "fanout"])
def test_a_chain_and_a_fan_out_run_in_one_allocation(orchestrator, transport, shape):
    o = orchestrator(TEST_SHAPE=shape, seconds=4)
    out = o.finish("run")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    steps = steps_of(transport, o.asset)
    allocations = {s["id"].split(".")[0] for s in steps}
    assert len(steps) == 3 and len(allocations) == 1, steps
    assert jobs_of(transport, o.asset) == []  # no asset ran as a job of its own
    (alloc,) = allocations
    assert all(s["state"] == "COMPLETED" for s in steps), steps
    # the run's last step released it: the holder ended without waiting out its idle timeout (60 s)
    assert wait_until(lambda: job_state(transport, alloc) == "COMPLETED", 20)
    if shape == "fanout":  # 2 CPUs, steps of 1: two side by side, the third waited inside the allocation
        spans = sorted((s["start"], s["end"]) for s in steps)
        assert spans[1][0] < spans[0][1], spans  # the first two overlapped
        assert spans[2][0] >= min(spans[0][1], spans[1][1]), spans  # the third started when one had ended
    else:  # each after the one before
        spans = sorted((s["start"], s["end"]) for s in steps)
        assert all(spans[i + 1][0] >= spans[i][1] for i in range(2)), spans


@pytest.mark.parametrize("when", ["running", "completed"])
def test_a_crash_mid_step_and_a_reexecution_reattach_to_or_adopt_the_step(orchestrator, transport, when):
    o = orchestrator(TEST_N=1, seconds=40 if when == "running" else 6)
    first = o.start("run")
    step = wait_until(lambda: running_step(transport, o.asset), 90, 0.3)
    o.kill_tree(first)
    if when == "running":  # the crash did not cancel it
        assert running_step(transport, o.asset) == step
    else:
        wait_until(lambda: [s["state"] for s in steps_of(transport, o.asset)] == ["COMPLETED"], 60)
    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    word = "Reattaching to" if when == "running" else "Adopting"
    assert any(f"{word} Slurm job {step}" in m for m in o.messages()), "\n".join(o.messages())
    assert [s["id"] for s in steps_of(transport, o.asset)] == [step]  # never a second step
    assert o.metadata()["slurm_step_id"] == step


def test_terminate_cancels_its_step_and_leaves_the_others(orchestrator, transport):
    name = f"t{uuid.uuid4().hex[:8]}"
    victim = orchestrator(TEST_N=1, TEST_SCOPE="named", TEST_ALLOC_NAME=name, TEST_IDLE=10, seconds=60)
    other = orchestrator(TEST_N=1, TEST_SCOPE="named", TEST_ALLOC_NAME=name, TEST_IDLE=10, seconds=8)
    first = victim.start("run")
    wait_until(lambda: running_step(transport, victim.asset), 90, 0.3)
    second = other.start("run")
    wait_until(lambda: running_step(transport, other.asset), 90, 0.3)
    os.killpg(first.pid, signal.SIGINT)  # what Dagster's run termination delivers to the step process
    out, _ = first.communicate(timeout=120)
    assert out.strip().endswith("FAILURE"), out[-3000:]
    (cancelled,) = steps_of(transport, victim.asset)
    assert wait_until(lambda: steps_of(transport, victim.asset)[0]["state"].startswith("CANCELLED"), 30)
    out, _ = second.communicate(timeout=120)
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    (done,) = steps_of(transport, other.asset)
    assert done["state"] == "COMPLETED" and done["id"].split(".")[0] == cancelled["id"].split(".")[0]


def _materialize(assets, compute):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(assets, resources={"compute": compute}, raise_on_error=False, instance=instance)
    result.log_messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result


def _sleeper(name: str, seconds: float, **run_kwargs):
    @dg.asset(name=name)
    def sleeper(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=SLEEPS, extras={"seconds": seconds}, **run_kwargs).get_results()

    return sleeper


def _failure_text(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the step did not fail"
    return failures[0].event_specific_data.error.message


def test_an_allocation_whose_time_limit_ends_mid_step_fails_that_step_clearly(slurm, pipes_env):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env,
                              allocation=SlurmAllocation(cpus=1, mem="256M", time_limit="00:01:00"))
    refused = _materialize([_sleeper("too_long", 1, resource_requirements={"time_limit": "00:05:00"})], compute)
    assert "time_limit=00:05:00, more than its whole allocation" in _failure_text(refused)
    started = time.monotonic()
    result = _materialize([_sleeper("cut_short", 600)], compute)
    assert not result.success and time.monotonic() - started < 180
    text = _failure_text(result)
    assert "allocation" in text and "SlurmAllocation.time_limit=00:01:00" in text and "TIMEOUT" in text, text


def test_a_named_allocation_serves_two_runs_and_ends_after_its_idle_timeout(slurm, pipes_env, transport, cluster_env):
    name = f"n{uuid.uuid4().hex[:8]}"
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env,
                              allocation=SlurmAllocation(cpus=1, mem="256M", time_limit="00:10:00", scope="named",
                                                         name=name, idle_timeout=6))
    runs = [_materialize([_sleeper(f"named_{i}", 1)], compute) for i in range(2)]
    assert all(r.success for r in runs)
    meta = [r.asset_materializations_for_node(f"named_{i}")[0].metadata for i, r in enumerate(runs)]
    alloc = meta[0]["slurm_allocation_id"].value
    assert meta[1]["slurm_allocation_id"].value == alloc
    assert meta[1]["slurm_step_id"].value == f"{alloc}.1"
    assert "slurm_queue_wait_saved_seconds" in meta[1]
    status = subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "agent", "allocations"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": slurm.remote_base,
                                 "SLURM_EDGE_NODE_KNOWN_HOSTS": cluster_env["TESTCLUSTER_KNOWN_HOSTS"]})
    assert name in status.stdout and alloc in status.stdout, status.stdout + status.stderr
    ended = time.monotonic()
    assert wait_until(lambda: job_state(transport, alloc) == "COMPLETED", 30)
    assert time.monotonic() - ended < 6 + 20
    base = slurm.remote_base
    assert transport.run(f"cut -d' ' -f2 {base}/allocations/{name}/0/ended").stdout.strip() == "idle"
