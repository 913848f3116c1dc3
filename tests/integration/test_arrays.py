"""Partition ranges and fan-outs as Slurm job arrays, on the real test cluster: one array for a range,
per-partition metadata, failures named and re-executed alone, chunking at max_array_size, the %K throttle,
compute.map, reattach after the orchestrator was killed, terminate cancelling the whole array."""

import os
import signal
import subprocess
import time
import uuid
from datetime import datetime

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SlurmJobError, SlurmResource
from tests.integration.test_lifecycle import Orchestrator

pytestmark = pytest.mark.cluster

DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2027-01-01")


def _keys(n: int) -> list[str]:
    return DAYS.get_partition_keys()[:n]


def _range_asset(payloads, **extras):
    @dg.asset(name=f"daily_{uuid.uuid4().hex[:8]}", partitions_def=DAYS,
              backfill_policy=dg.BackfillPolicy.single_run())
    def daily(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "partition.py"), extras=extras).get_results()

    return daily


def _materialize_range(asset, compute, n: int):
    keys = _keys(n)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([asset], resources={"compute": compute}, instance=instance, raise_on_error=False,
                            tags={"dagster/asset_partition_range_start": keys[0],
                                  "dagster/asset_partition_range_end": keys[-1]})
    result.log_messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def _sacct_tasks(transport, job_id: str) -> list[tuple[str, datetime, datetime]]:
    out = transport.run(f"sacct -X -n -P -o JobID,Start,End -j {job_id}", retry=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    return [(r[0], datetime.fromisoformat(r[1]), datetime.fromisoformat(r[2])) for r in rows]


def test_range_of_20_partitions_is_one_throttled_array(slurm, pipes_env, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env, max_concurrent_tasks=3)
    result = _materialize_range(_range_asset(payloads, seconds=1), compute, 20)
    assert result.success, result.log_messages[-10:]
    mats = {m.partition: {k: v.value for k, v in m.metadata.items()}
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}
    assert sorted(mats) == _keys(20)
    job_ids = {meta["slurm_job_id"] for meta in mats.values()}
    array = next(iter(job_ids)).split("_")[0]
    assert job_ids == {f"{array}_{i}" for i in range(20)}  # one array, one task per partition
    for key, meta in mats.items():
        assert meta["key"] == key and meta["window_start"].startswith(key)  # the task's own partition
        assert meta["slurm_state"] == "COMPLETED" and meta["slurm_array_job_ids"] == array
        assert meta["partitions_succeeded"] == 20
    assert sum(1 for m in result.log_messages if m.startswith("Submitted Slurm array job")) == 1
    assert any(m == f"[{_keys(20)[4]}] working on {_keys(20)[4]}" for m in result.log_messages)
    tasks = _sacct_tasks(transport, array)
    assert len(tasks) == 20
    most = max(sum(1 for _, s, e in tasks if s <= t < e) for _, t, _ in tasks)
    assert most <= 3, tasks  # --array=0-19%3


def test_failed_partitions_are_named_and_reexecuted_alone(cluster_env, remote_base, pipes_env, payloads,
                                                          transport, tmp_path):
    keys = _keys(6)
    home = tmp_path / "home"
    home.mkdir()
    o = Orchestrator(cluster_env, remote_base, pipes_env, home, payload=payloads / "partition.py", seconds=0,
                     prefix="daily", script="array_job.py", TEST_RANGE=f"{keys[0]}..{keys[-1]}",
                     TEST_FAIL_ONCE=f"{keys[1]},{keys[4]}", TEST_MARKERS=f"{remote_base}/markers-{uuid.uuid4().hex}")
    out = o.finish("run")
    assert out.strip().endswith("FAILURE"), out[-3000:]
    instance, run = o.latest_run()
    mats = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert sorted(e.dagster_event.partition for e in mats) == [k for k in keys if k not in (keys[1], keys[4])]
    failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    failure = "\n".join(e.dagster_event.step_failure_data.error.message for e in failures)
    assert f"2 of 6 partitions failed: {keys[1]}, {keys[4]}" in failure and "exit status 3" in failure
    tails = failures[0].dagster_event.step_failure_data.user_failure_data.metadata["slurm_stderr_tails"].value
    assert f"**{keys[1]}**" in tails and f"{keys[4]} fails this once" in tails  # each failed task's stderr, once
    first_array = mats[0].asset_materialization.metadata["slurm_job_id"].value.split("_")[0]

    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    instance, run = o.latest_run()
    assert any("running the other 2" in m for m in o.messages()), o.messages()[-20:]
    mats = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    by_key = {e.dagster_event.partition: e.asset_materialization.metadata for e in mats}
    assert sorted(by_key) == keys
    second = {by_key[k]["slurm_job_id"].value for k in (keys[1], keys[4])}
    assert {j.split("_")[0] for j in second} != {first_array}
    assert by_key[keys[0]]["slurm_job_id"].value == f"{first_array}_0"  # not run again
    second_array = next(iter(second)).split("_")[0]
    assert sorted(t[0] for t in _sacct_tasks(transport, second_array)) == sorted(second)  # exactly the 2 re-ran


def test_ranges_past_max_array_size_are_split(slurm, pipes_env, payloads):
    small = SlurmResource(ssh=slurm.ssh, remote_base=slurm.remote_base, queue=slurm.queue, max_array_size=3)
    compute = ComputeResource(mode="slurm", slurm=small, pre_deployed_env_path=pipes_env)
    result = _materialize_range(_range_asset(payloads), compute, 7)
    assert result.success, result.log_messages[-10:]
    jobs = [e.event_specific_data.materialization.metadata["slurm_job_id"].value
            for e in result.get_asset_materialization_events()]
    arrays = sorted({j.split("_")[0] for j in jobs})
    assert len(arrays) == 3 and sorted(j.split("_")[1] for j in jobs) == ["0", "0", "0", "1", "1", "2", "2"]
    assert sum(1 for m in result.log_messages if m.startswith("Submitted Slurm array job")) == 3


def test_map_fans_out_items(slurm, pipes_env, payloads):
    @dg.asset
    def sweep(context: dg.AssetExecutionContext, compute: ComputeResource):
        invocation = compute.map(context, payloads / "partition.py", items=["a", "b", "c"])
        assert [o.task.label for o in invocation.outcomes] == ["item 0", "item 1", "item 2"]
        return invocation.get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([sweep], resources={"compute": compute})
    meta = result.asset_materializations_for_node("sweep")[0].metadata
    items = meta["items"].value
    assert [i["metadata"]["key"] for i in items] == ["a", "b", "c"] and meta["items_succeeded"].value == 3
    assert len({i["job_id"].split("_")[0] for i in items}) == 1


def test_map_failure_names_the_item(slurm, pipes_env, payloads):
    @dg.asset
    def sweep(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.map(context, payloads / "partition.py", items=["a", "b"], extras={"fail": ["b"]}).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    with pytest.raises(SlurmJobError, match=r"1 of 2 items failed: item 1\n- item 1 \(job \d+_1, exit status 3\)") as err:
        dg.materialize([sweep], resources={"compute": compute})
    assert "b is broken" in err.value.metadata["slurm_stderr_tails"].value


def _orchestrator(cluster_env, remote_base, pipes_env, payloads, tmp_path, n, seconds):
    keys = _keys(n)
    home = tmp_path / "home"
    home.mkdir()
    o = Orchestrator(cluster_env, remote_base, pipes_env, home, payload=payloads / "partition.py",
                     seconds=seconds, prefix="daily", script="array_job.py", TEST_RANGE=f"{keys[0]}..{keys[-1]}")
    o.job_name = f"dagster-{o.asset}-{keys[0]}..{keys[-1]}"  # an array's name carries its partition range
    return o


def _running_task(o, transport, timeout: float = 90) -> str:
    """A task of the test's array that runs (its pending rest is listed too: wait_job looks at the last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [j for j, state in o.jobs(transport) if state == "RUNNING"]
        if running:
            return running[0]
        time.sleep(0.3)
    raise AssertionError(f"no task of {o.job_name} ran: {o.jobs(transport)}")


def test_reattach_to_the_array_after_the_orchestrator_was_killed(cluster_env, remote_base, pipes_env, payloads,
                                                                 transport, tmp_path):
    o = _orchestrator(cluster_env, remote_base, pipes_env, payloads, tmp_path, 4, 15)
    first = o.start("run")
    array = _running_task(o, transport).split("_")[0]
    o.kill_tree(first)
    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    assert any(f"Reattaching to Slurm array job {array}" in m for m in o.messages()), o.messages()[-20:]
    assert not any(m.startswith("Submitted Slurm array job") for m in o.messages())
    assert {j.split("_")[0] for j, _ in o.jobs(transport)} == {array}  # one array, never a second


def test_terminate_cancels_the_whole_array(cluster_env, remote_base, pipes_env, payloads, transport, tmp_path):
    o = _orchestrator(cluster_env, remote_base, pipes_env, payloads, tmp_path, 4, 60)
    proc = o.start("run")
    array = _running_task(o, transport).split("_")[0]
    os.killpg(proc.pid, signal.SIGINT)  # what Dagster's terminate delivers to the run
    try:
        proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    # the terminate waited for the cancel: nothing of the array is queued once the orchestrator is gone
    assert transport.run(f"squeue -h -j {array} -o %T || true").stdout.strip() == ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s.split(" ")[0] for _, s in o.jobs(transport)}
        if states == {"CANCELLED"}:
            break
        time.sleep(0.5)
    assert states == {"CANCELLED"}, o.jobs(transport)
    assert {j.split("_")[0] for j, _ in o.jobs(transport)} == {array}
    left = transport.run(f"ls {remote_base}/runs/*/{o.asset}-*/*/env.sh {remote_base}/runs/*/{o.asset}-*/*/context.*.json "
                         "2>/dev/null || true")
    assert left.stdout.strip() == ""  # a terminated array leaves no secrets behind
