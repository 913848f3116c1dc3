"""Walltime on the real cluster: the signal before the time limit reaches the payload, which checkpoints; the
step's job is submitted again and resumes (one Dagster step); when requeues run out, the failure names them."""

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource

pytestmark = pytest.mark.cluster


def _run(ssh, remote_base, pipes_env, payloads, target: int, max_requeues: int):
    slurm = SlurmResource(ssh=ssh, remote_base=remote_base, requeue_on=["TIMEOUT", "PREEMPTED"],
                          max_requeues=max_requeues,
                          queue=SlurmQueueConfig(mem="128M", time_limit="00:01:00", signal_before_timeout="TERM@45"))

    @dg.asset(name="counter")
    def counter(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "checkpoints.py"),
                           extras={"target": target}).get_results()

    instance = dg.DagsterInstance.ephemeral()
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([counter], resources={"compute": compute}, instance=instance, raise_on_error=False)
    return result, [e.user_message for e in instance.all_logs(result.run_id)]


def test_a_signalled_job_is_requeued_and_resumes_from_its_checkpoint(ssh, remote_base, pipes_env, payloads):
    """A 1-minute limit, the signal 45 s before it (Slurm sends it within ~15-45 s): the payload needs 40 s."""
    result, messages = _run(ssh, remote_base, pipes_env, payloads, target=40, max_requeues=4)
    assert result.success, messages[-25:]
    meta = result.asset_materializations_for_node("counter")[0].metadata
    requeues = meta["slurm_requeues"].value
    assert requeues >= 1 and meta["count"].value == 40 and meta["resumed_from"].value > 0
    assert len(meta["slurm_attempt_job_ids"].value.split(", ")) == requeues + 1
    assert meta["slurm_node_hours_all_attempts"].value > meta["slurm_node_hours"].value
    assert sum("submitting it again (requeue" in m for m in messages) == requeues
    assert any(m.startswith("starting at 0") for m in messages) and any(
        m.startswith("starting at ") and m != "starting at 0" for m in messages)


def test_requeues_that_run_out_fail_naming_every_attempt(ssh, remote_base, pipes_env, payloads):
    result, _messages = _run(ssh, remote_base, pipes_env, payloads, target=100000, max_requeues=1)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "Gave up after 1 requeue(s) (SlurmResource.max_requeues=1)" in failure.error.message
    jobs = failure.user_failure_data.metadata["slurm_attempt_job_ids"].value.split(", ")
    assert len(jobs) == 2 and all(j in failure.error.message for j in jobs)
    meta = failure.user_failure_data.metadata
    # the payload left on the signal (sacct: FAILED, noted) or Slurm ended it at the limit (TIMEOUT)
    assert meta["slurm_state"].value == "TIMEOUT" or meta["slurm_signalled_before_timeout"].value is True


def test_a_preempted_job_is_requeued_and_finishes(ssh, remote_base, pipes_env, payloads, transport):
    """Our job takes the whole node in the preemptible partition; a job in the high-priority partition cancels
    it (PREEMPTED, for real); the library submits it again, and it resumes once the node is free."""
    import threading
    import time

    slurm = SlurmResource(ssh=ssh, remote_base=remote_base, requeue_on=["PREEMPTED"], max_requeues=2,
                          queue=SlurmQueueConfig(partition="lowprio", cpus=2, mem="128M", time_limit="00:05:00"))

    @dg.asset(name="preemptible")
    def preemptible(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "checkpoints.py"),
                           extras={"target": 12}).get_results()

    instance = dg.DagsterInstance.ephemeral()
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(result=dg.materialize(
        [preemptible], resources={"compute": compute}, instance=instance, raise_on_error=False)))
    worker.start()
    deadline = time.monotonic() + 90
    while not transport.run(f"cat {remote_base}/runs/*/preemptible-*/checkpoint/count 2>/dev/null || true"
                            ).stdout.strip() not in ("", "0", "1"):
        assert time.monotonic() < deadline, "the preemptible job never got going"
        time.sleep(0.3)
    high = transport.run("sbatch --parsable -p highprio -c 2 --mem=50M -t 1 --wrap 'sleep 4'").stdout.strip()
    worker.join(240)
    result = out["result"]
    assert result.success, [e.user_message for e in instance.all_logs(result.run_id)][-20:]
    meta = result.asset_materializations_for_node("preemptible")[0].metadata
    assert meta["slurm_requeues"].value == 1 and meta["count"].value == 12 and meta["resumed_from"].value >= 2
    first = meta["slurm_attempt_job_ids"].value.split(", ")[0]
    states = transport.run(f"sacct -X -n -P -o JobID,State -j {first},{high}").stdout
    assert f"{first}|PREEMPTED" in states and f"{high}|COMPLETED" in states


def test_a_crash_during_a_requeue_makes_no_second_job(cluster_env, remote_base, pipes_env, payloads, transport,
                                                       tmp_path):
    """The orchestrator is killed (kill -9) right after it submitted the requeued job; the re-execution
    reattaches to that job or adopts its result: two jobs in all, the preempted one and the one that finished."""
    import time

    from tests.integration.test_lifecycle import Orchestrator

    (tmp_path / "home").mkdir()
    o = Orchestrator(cluster_env, remote_base, pipes_env, tmp_path / "home", payload=payloads / "checkpoints.py",
                     prefix="requeued", TEST_PREEMPTIBLE="1", TEST_TARGET="10")
    first = o.start("run")
    job_id = o.wait_job(transport, {"RUNNING"})
    time.sleep(2)
    high = transport.run("sbatch --parsable -p highprio -c 2 --mem=50M -t 1 --wrap 'sleep 6'").stdout.strip()
    deadline = time.monotonic() + 60
    while len(o.jobs(transport)) < 2:  # the orchestrator saw PREEMPTED and submitted the job again
        assert time.monotonic() < deadline, o.jobs(transport)
        time.sleep(0.2)
    o.kill_tree(first)
    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    jobs = o.jobs(transport)
    assert [state.split(" ")[0] for _, state in jobs] == ["PREEMPTED", "COMPLETED"] and jobs[0][0] == job_id, jobs
    # the re-execution took the requeued job's outcome (reattached while it ran, or adopted once it had completed:
    # two correct paths, worded differently): one materialization, from that job
    assert o.metadata()["slurm_job_id"] == jobs[1][0]
    assert transport.run(f"sacct -X -n -P -o State -j {high}").stdout.strip() == "COMPLETED"
