"""Each compute.run call gets its own job, and exactly one, on the real cluster: several calls in a step,
steps with long common key prefixes, and sbatch answers lost to a hang or a cut connection."""

import json
import uuid

import dagster as dg
import pytest
from cluster_jobs import jobs_named

from dagster_slurm import ComputeResource, SlurmJobError, SlurmResource, SSHConnectionResource

pytestmark = pytest.mark.cluster


def _materialize(assets, compute):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(assets, resources={"compute": compute}, raise_on_error=False, instance=instance)
    result.log_messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result


@pytest.mark.parametrize("debug_mode", [False, True])
def test_two_calls_in_one_step_each_run_their_own_payload(slurm, pipes_env, payloads, debug_mode):
    @dg.asset
    def two_calls(context: dg.AssetExecutionContext, compute: ComputeResource):
        a = compute.run(context=context, payload_path=str(payloads / "trivial.py")).get_materialize_result()
        b = compute.run(context=context, payload_path=str(payloads / "sleeps.py"),
                        extras={"seconds": 0.2}).get_materialize_result()
        return dg.MaterializeResult(metadata={
            "a_value": a.metadata["value"], "b_slept": b.metadata["slept"],
            "jobs": json.dumps([a.metadata["slurm_job_id"].value, b.metadata["slurm_job_id"].value])})

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env, debug_mode=debug_mode)
    result = _materialize([two_calls], compute)
    assert result.success, result.log_messages[-20:]
    meta = result.asset_materializations_for_node("two_calls")[0].metadata
    assert meta["a_value"].value == 42 and meta["b_slept"].value == 0.2
    first, second = json.loads(meta["jobs"].value)
    assert first != second


def test_try_a_except_b_runs_b(slurm, pipes_env, payloads, transport):
    @dg.asset
    def fallback(context: dg.AssetExecutionContext, compute: ComputeResource):
        try:
            compute.run(context=context, payload_path=str(payloads / "fails.py"))
        except SlurmJobError as exc:
            context.log.info(f"A failed in job {exc.job_id}")
        return compute.run(context=context, payload_path=str(payloads / "trivial.py")).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env, debug_mode=True)
    result = _materialize([fallback], compute)
    assert result.success, result.log_messages[-20:]
    meta = result.asset_materializations_for_node("fallback")[0].metadata
    assert meta["value"].value == 42
    failed = next(m for m in result.log_messages if m.startswith("A failed in job "))
    assert failed.split()[-1] != meta["slurm_job_id"].value


def test_steps_with_a_long_common_key_prefix_get_their_own_jobs(slurm, pipes_env, payloads):
    prefix = "p" * 120

    def make(suffix: str, seconds: float):
        @dg.asset(name=f"{prefix}_{suffix}")
        def long_name(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(context=context, payload_path=str(payloads / "sleeps.py"),
                               extras={"seconds": seconds}).get_results()

        return long_name

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize([make("one", 0.1), make("two", 0.3)], compute)
    assert result.success, result.log_messages[-20:]
    one = result.asset_materializations_for_node(f"{prefix}_one")[0].metadata
    two = result.asset_materializations_for_node(f"{prefix}_two")[0].metadata
    assert (one["slept"].value, two["slept"].value) == (0.1, 0.3)
    assert one["slurm_job_id"].value != two["slurm_job_id"].value


@pytest.mark.parametrize("fault", ["hangs", "cuts"])
def test_lost_sbatch_answer_gives_exactly_one_job(misbehaving_sbatch, slurm, pipes_env, payloads, transport, fault):
    name = f"sbatch_{fault}_{uuid.uuid4().hex[:8]}"
    ssh = SSHConnectionResource(**{**slurm.ssh.model_dump(), "command_timeout": 5})  # also sbatch's bound
    quick = SlurmResource(ssh=ssh, remote_base=slurm.remote_base, queue=slurm.queue)

    @dg.asset(name=name)
    def lost(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "trivial.py")).get_results()

    compute = ComputeResource(mode="slurm", slurm=quick, pre_deployed_env_path=pipes_env)
    result = _materialize([lost], compute)
    if fault == "cuts":  # the fault happened: the wrapper's pkill found the connection's processes
        with open(misbehaving_sbatch.cut_marker) as fh:
            assert fh.read().strip() == "0", "the sbatch wrapper cut no SSH connection"
    assert result.success, result.log_messages[-20:]
    jobs = jobs_named(transport, f"dagster-{name}")
    assert len(jobs) == 1, jobs
    assert result.asset_materializations_for_node(name)[0].metadata["slurm_job_id"].value == jobs[0][0]
    assert result.asset_materializations_for_node(name)[0].metadata["value"].value == 42
    lost = "sbatch's answer was lost" if fault == "hangs" else "the connection dropped during sbatch"
    assert any(m.startswith(lost) for m in result.log_messages), result.log_messages[-20:]
    assert any(m.startswith(f"Found Slurm job {jobs[0][0]}: sbatch had submitted it") for m in result.log_messages)
