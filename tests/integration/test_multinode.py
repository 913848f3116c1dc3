"""Multi-node jobs on the test cluster's multinode partition (nodes n1..n3, a slurmd each): srun ranks,
torchrun over gloo, a failing rank, a cancel while the ranks start."""

import os
import re
import signal
import time

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, RayLauncher, SrunLauncher, TorchrunLauncher
from tests.integration.test_lifecycle import Orchestrator

pytestmark = pytest.mark.cluster

PAYLOADS = os.path.join(os.path.dirname(__file__), "..", "payloads")


def _asset(payload: str, launcher, nodes: int, mem: str = "256M", **run_kwargs):
    @dg.asset(name="ranked")
    def ranked(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=os.path.join(PAYLOADS, payload), launcher=launcher,
                           resource_requirements={"partition": "multinode", "num_nodes": nodes, "mem": mem},
                           **run_kwargs).get_results()

    return ranked


def _materialize(asset, compute):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([asset], resources={"compute": compute}, raise_on_error=False, instance=instance)
    return result, [e.user_message for e in instance.all_logs(result.run_id)]


@pytest.fixture(scope="module")
def torch_env(transport):
    from remote_env import make_torch_env

    return make_torch_env(transport, "dagster-slurm-tests/envs/torch-cpu")


@pytest.fixture(scope="module")
def ray_env(transport):
    from remote_env import make_ray_env

    return make_ray_env(transport, "dagster-slurm-tests/envs/ray")


def test_ray_cluster_over_three_nodes_runs_a_task_on_each(slurm, ray_env, capfd):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=ray_env)
    launcher = RayLauncher(ray_start_args=["--object-store-memory=100000000"])
    result, messages = _materialize(_asset("ray_nodes.py", launcher, 3, mem="3G"), compute)
    assert result.success, messages[-20:]
    meta = result.asset_materializations_for_node("ranked")[0].metadata
    assert (meta["ray_nodes"].value, meta["task_nodes"].value) == (3, ["n1", "n2", "n3"])
    _out, err = capfd.readouterr()
    assert "[ray] cluster of 3 node(s)" in err and "[ray n2]" in err


def test_ray_nodes_that_do_not_join_in_time_fail_the_step_and_are_torn_down(slurm, ray_env, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=ray_env)
    launcher = RayLauncher(start_timeout=3, ray_start_args=["--object-store-memory=100000000"])
    result, _messages = _materialize(_asset("ray_nodes.py", launcher, 3, mem="3G"), compute)
    assert not result.success
    first = result.get_step_failure_events()[0].step_failure_data.error.message.splitlines()[0]
    assert re.search(r"dagster-slurm: only \d of 3 Ray nodes joined within 3s \(RayLauncher.start_timeout\)", first), first
    job_id = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata["slurm_job_id"].value
    deadline = time.monotonic() + 30  # the Ray steps went with the job: no raylet, no ray process left
    while transport.run(f"squeue -h -s -j {job_id} || true").stdout.strip() or transport.run(
            "pgrep -u \"$(id -u)\" -f 'envs/ray/env/.*(raylet|gcs_server|ray start)' || true").stdout.strip():
        assert time.monotonic() < deadline, transport.run("pgrep -af raylet; squeue -s").stdout
        time.sleep(0.5)


def test_srun_runs_a_rank_per_node_and_rank_zero_reports(slurm, pipes_env, capfd):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result, messages = _materialize(_asset("ranks.py", SrunLauncher(), 3, extras={"tag": "t7"}), compute)
    assert result.success, messages[-20:]
    meta = result.asset_materializations_for_node("ranked")[0].metadata
    assert meta["world_size"].value == 3
    assert meta["ranks"].value == ["n1:t7", "n2:t7", "n3:t7"]  # every rank read the extras; rank r on n(r+1)
    assert meta["slurm_nodes"].value == "n[1-3]" and meta["slurm_partition"].value == "multinode"
    assert "rank 0 says hello" in messages and "rank 1 says hello" not in messages  # rank 0 alone writes Pipes
    out, _err = capfd.readouterr()
    for rank in range(3):
        assert f"[rank {rank}@n{rank + 1}] rank {rank} of 3 on n{rank + 1}" in out  # every rank's lines, prefixed


def test_a_failing_rank_fails_the_step_with_its_own_lines(slurm, pipes_env):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result, _messages = _materialize(_asset("ranks.py", SrunLauncher(), 3, extras={"tag": "t", "fail_ranks": [2]}),
                                     compute)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    first, second = failure.error.message.splitlines()[:2]
    assert first.endswith("[rank 2@n3] ValueError: rank 2 gave up")  # which rank, and why
    assert " FAILED, exit status 1" in second
    assert "[rank 2@n3] Traceback" in failure.user_failure_data.metadata["slurm_stderr_tail"].value


def test_torchrun_all_reduce_over_two_nodes(slurm, torch_env, capfd):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=torch_env)
    result, messages = _materialize(_asset("allreduce.py", TorchrunLauncher(nproc_per_node=2), 2, mem="3G"), compute)
    assert result.success, messages[-20:]
    meta = result.asset_materializations_for_node("ranked")[0].metadata
    assert (meta["world_size"].value, meta["rank_sum"].value) == (4, 6.0)  # 0+1+2+3 over 2 nodes x 2 processes
    assert meta["slurm_nodes"].value == "n[1-2]"
    out, _err = capfd.readouterr()
    lines = re.findall(r"^\[rank (\d)@(n\d)\] rank \1 of 4 on \2: sum 6.0$", out, re.M)
    assert sorted(int(r) for r, _ in lines) == [0, 1, 2, 3]  # every rank's line, prefixed (c10d assigns the ranks)
    assert sorted(n for _, n in lines) == ["n1", "n1", "n2", "n2"]


def test_terminate_while_the_ranks_start_cancels_every_step(cluster_env, remote_base, pipes_env, transport, tmp_path):
    (tmp_path / "home").mkdir()
    o = Orchestrator(cluster_env, remote_base, pipes_env, tmp_path / "home", seconds=120, prefix="ranks", TEST_NODES="3")
    first = o.start("run")
    try:
        _terminate_and_check(o, first, transport)
    finally:  # a failed check leaves neither the orchestrator nor its job behind for the next test
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        transport.run(f"scancel {' '.join(j for j, _ in o.jobs(transport))} 2>/dev/null || true")


def _terminate_and_check(o, first, transport):
    job_id = o.wait_job(transport, {"RUNNING"})
    os.killpg(first.pid, signal.SIGINT)  # Dagster's run termination
    out, _ = first.communicate(timeout=90)
    # The terminate waited for the cancel: once the orchestrator is gone, so is the job (a few seconds' grace
    # for slurmctld to drop a COMPLETING job), and no rank keeps running on any node.
    deadline = time.monotonic() + 10
    while transport.run(f"squeue -h -j {job_id} -o %T || true").stdout.strip() or transport.run(
            "pgrep -u \"$(id -u)\" -f 'payloads/sleeps.py|/sleeps.py' || true").stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(transport.run(f"squeue -s -j {job_id}; pgrep -af sleeps.py").stdout + "\n" + out[-5000:])
        time.sleep(0.3)
    assert o.jobs(transport) == [(job_id, o.jobs(transport)[-1][1])] and \
        o.jobs(transport)[-1][1].startswith("CANCELLED"), (o.jobs(transport), out[-3000:])


def _allocation_steps(transport, job_id: str) -> list[tuple[str, str, str]]:
    """sacct's lines of an allocation: (JobID, JobName, NodeList)."""
    out = transport.run(f"sacct -n -P -j {job_id} -o JobID,JobName,NodeList", retry=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 2]  # type: ignore[misc]


def _in_allocation(name: str, payload: str, launcher, nodes: int, mem: str, **extras):
    @dg.asset(name=name)
    def step(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=os.path.join(PAYLOADS, payload), launcher=launcher,
                           resource_requirements={"num_nodes": nodes, "mem": mem}, extras=extras).get_results()

    return step


def test_srun_and_ray_steps_run_across_the_nodes_of_one_shared_allocation(slurm, ray_env, transport, capfd):
    """Multi-node launchers in a shared allocation: each asset is one step over its nodes, whose ranks (srun)
    or Ray nodes overlap the step's own resources; no job of their own, and no step left behind."""
    from dagster_slurm import SlurmAllocation

    allocation = SlurmAllocation(num_nodes=3, cpus=1, mem="3G", time_limit="00:15:00", partition="multinode")
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=ray_env, allocation=allocation)
    assets = [_in_allocation("ranks_in_alloc", "ranks.py", SrunLauncher(), 3, "1G", tag="a3"),
              _in_allocation("ray_in_alloc", "ray_nodes.py",
                             RayLauncher(ray_start_args=["--object-store-memory=100000000"]), 3, "2G")]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(assets, resources={"compute": compute}, raise_on_error=False, instance=instance)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success, messages[-30:]
    ranks = result.asset_materializations_for_node("ranks_in_alloc")[0].metadata
    ray = result.asset_materializations_for_node("ray_in_alloc")[0].metadata
    assert ranks["ranks"].value == ["n1:a3", "n2:a3", "n3:a3"] and ranks["world_size"].value == 3
    assert (ray["ray_nodes"].value, ray["task_nodes"].value) == (3, ["n1", "n2", "n3"])
    job = ranks["slurm_allocation_id"].value
    assert ray["slurm_allocation_id"].value == job
    own = {ranks["slurm_job_id"].value, ray["slurm_job_id"].value}  # each asset: one step of the allocation
    assert len(own) == 2 and all(s.split(".")[0] == job and s.split(".")[1].isdigit() for s in own), own
    lines = _allocation_steps(transport, job)
    assert all(jid.split(".")[0] == job for jid, _, _ in lines)
    mine = {jid: nodes for jid, name, nodes in lines if "." in jid and name.startswith("dagster-")}
    assert mine == {s: "n[1-3]" for s in own}, lines  # each asset's step spans its 3 nodes, and no other
    assert any(name.startswith("ray-") for _, name, _ in lines)  # Ray's nodes: steps of the same allocation
    out, err = capfd.readouterr()
    assert "[rank 2@n3] rank 2 of 3 on n3" in out and "[ray] cluster of 3 node(s)" in err
    # the Ray steps went with their asset's step: nothing of the allocation runs but its holder
    wait = time.monotonic() + 30
    while (left := [s for s in transport.run(f"squeue -h -s -j {job} -o %i || true").stdout.split()
                    if not s.endswith((".batch", ".extern"))]):
        assert time.monotonic() < wait, left
        time.sleep(0.5)


def test_torchrun_all_reduce_in_a_shared_allocation(slurm, torch_env):
    from dagster_slurm import SlurmAllocation

    allocation = SlurmAllocation(num_nodes=2, cpus=1, mem="3G", time_limit="00:15:00", partition="multinode")
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=torch_env, allocation=allocation)
    asset = _in_allocation("torch_in_alloc", "allreduce.py", TorchrunLauncher(nproc_per_node=2), 2, "3G")
    result, messages = _materialize(asset, compute)
    assert result.success, messages[-20:]
    meta = result.asset_materializations_for_node("torch_in_alloc")[0].metadata
    assert (meta["world_size"].value, meta["rank_sum"].value) == (4, 6.0)
    assert meta["slurm_job_id"].value.startswith(f"{meta['slurm_allocation_id'].value}.")  # a step of it
