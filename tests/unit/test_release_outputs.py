"""Every parser against what each Slurm release our users run really prints: 22.05, 24.11 and 26.05,
recorded on the test cluster by tests/data/slurm/record_release.sh (each file's header says the command,
the release and what the jobs were)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dagster_slurm.config.queue import sbatch_options_from_help
from dagster_slurm.slurm.array import aggregate, parse_max_array_size, task_accounting
from dagster_slurm.slurm.ledger import ESTIMATE, parse_estimate, parse_lookup, parse_state, unread_estimate
from dagster_slurm.slurm.parse import (
    TERMINAL_STATES,
    config_value,
    is_transient_sbatch_error,
    only_unknown_job_ids,
    parse_active,
    parse_sacct,
    parse_sbatch_job_id,
    parse_squeue,
    parse_timestamp,
    unresolvable_reason,
)

ROOT = Path(__file__).parent.parent / "data" / "slurm" / "releases"
RELEASES = ["22.05", "24.11", "26.05"]
# Every release is recorded whole (each alone on the machine, so that its jobs ran): job ends are read from all.
WHOLE = RELEASES


def test_every_release_our_users_run_is_recorded():
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir()) == RELEASES


def header(release: str, name: str) -> list[str]:
    return [line[2:] for line in (ROOT / release / f"{name}.txt").read_text().splitlines() if line.startswith("# ")]


def out(release: str, name: str) -> str:
    lines = (ROOT / release / f"{name}.txt").read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("# "))


def rec(release: str, name: str) -> dict:
    return json.loads((ROOT / release / f"{name}.json").read_text())


def ids_of(release: str, name: str) -> list[str]:
    """The job ids a recording's command asked about (its ``-j`` list)."""
    return re.search(r"-j (\d[\d,]*)", header(release, name)[0]).group(1).split(",")


@pytest.fixture(params=RELEASES)
def release(request) -> str:
    return request.param


@pytest.fixture(params=WHOLE)
def whole(request) -> str:
    return request.param


def test_the_recording_is_of_its_release(release):
    assert out(release, "version").split()[1].startswith(release + ".")


def test_sbatch_parsable_gives_the_job_id(whole):
    job_id = parse_sbatch_job_id(rec(whole, "sbatch_parsable")["stdout"])
    assert job_id.isdigit() and parse_sacct(out(whole, "sacct_completed"))[job_id].state == "COMPLETED"


@pytest.mark.parametrize("name", ["sbatch_invalid_partition", "sbatch_invalid_time", "sbatch_mem_too_large",
                                  "sbatch_bad_constraint", "sbatch_nodelist_outside_partition"])
def test_sbatch_refusals_fail_and_are_never_retried(release, name):
    r = rec(release, name)
    assert r["exit_status"] != 0 and "error" in r["stderr"] and not is_transient_sbatch_error(r["stderr"])


@pytest.mark.parametrize("name", ["sbatch_test_only_idle", "sbatch_test_only_multinode_idle", "sbatch_test_only_blocked"])
def test_test_only_estimates_are_read(release, name):
    r = rec(release, name)
    line = f"{ESTIMATE}{r['cluster_time']}|{r['stderr'].strip()}"
    now, start, nodes, partition = parse_estimate(line)
    assert now == r["cluster_time"] and unread_estimate(line) is None
    assert partition == re.search(r"-p (\S+)", r["command"]).group(1)
    assert parse_timestamp(start) >= parse_timestamp(now) and nodes
    if name == "sbatch_test_only_blocked":  # n1 busy for 2 minutes: later than now
        assert parse_timestamp(start) > parse_timestamp(now) + 30


def test_squeue_running_and_pending_start(whole):
    running = parse_squeue(out(whole, "squeue_running"))  # the blocker runs; rec-completed runs or is about to
    assert set(running) == set(ids_of(whole, "squeue_running")) and "RUNNING" in {e.state for e in running.values()}
    multi, blocker = ids_of(whole, "squeue_pending_start")
    pending = parse_squeue(out(whole, "squeue_pending_start"))
    assert pending[multi].state == "PENDING" and pending[multi].reason in ("Resources", "Priority")
    assert parse_timestamp(pending[multi].start) is not None and pending[blocker].state == "RUNNING"


def test_pending_reasons_that_never_resolve_name_the_setting(whole):
    queue = parse_squeue(out(whole, "squeue_pending_reasons"))
    reasons = {e.reason for e in queue.values()}
    assert {"PartitionTimeLimit", "JobHeldUser", "Dependency", "DependencyNeverSatisfied"} <= reasons
    for e in queue.values():
        assert e.state == "PENDING"
        never = unresolvable_reason(e.reason)
        assert (never is None) == (e.reason in ("JobHeldUser", "Dependency")), e


def test_squeue_of_unknown_ids_is_no_failure(release):
    unknown = rec(release, "squeue_invalid_id")
    assert unknown["stdout"] == ""
    assert unknown["exit_status"] == 0 or only_unknown_job_ids(unknown["stderr"].strip().splitlines())
    mixed = rec(release, "squeue_mixed_valid_invalid")
    assert [e.state for e in parse_squeue(mixed["stdout"]).values()] == ["RUNNING"]
    assert rec(release, "sacct_unknown_id")["stdout"] == ""


def test_sacct_reads_every_end(whole):
    def one(name):
        (job_id,) = ids_of(whole, name)
        return parse_sacct(out(whole, name))[job_id]

    done = one("sacct_completed")
    assert done.state == "COMPLETED" and done.exit_code == "0:0" and done.elapsed_seconds >= 4
    assert done.max_rss_bytes and done.max_rss_bytes > 20 * 2**20 and done.total_cpu_seconds > 2
    assert done.requested_mem_bytes == 100 * 2**20 and done.time_limit_seconds == 120
    assert done.queue_wait_seconds is not None and done.partition == "debug" and done.gpus is None
    failed = one("sacct_failed")
    assert (failed.state, failed.exit_code) == ("FAILED", "3:0")
    assert one("sacct_timeout").state == "TIMEOUT"
    assert one("sacct_out_of_memory").state == "OUT_OF_MEMORY"
    assert one("sacct_cancelled").state == "CANCELLED"
    assert one("sacct_gpu").gpus == 1
    multi = one("sacct_multinode")
    assert multi.state == "COMPLETED" and multi.nnodes == 3
    pending = parse_sacct(out(whole, "sacct_cancelled_pending"))
    assert {pending[i].state for i in ids_of(whole, "sacct_cancelled_pending")} == {"CANCELLED"}
    assert all(pending[i].queue_wait_seconds is None for i in ids_of(whole, "sacct_cancelled_pending"))


def test_sacct_of_an_array_and_of_many_jobs_at_once(whole):
    (array,) = ids_of(whole, "sacct_array")
    tasks = task_accounting(parse_sacct(out(whole, "sacct_array")), array)
    assert sorted(tasks) == [0, 1, 2] and tasks[1].state == "FAILED" and tasks[0].state == "COMPLETED"
    assert aggregate(array, tasks).state == "FAILED"
    batch = parse_sacct(out(whole, "sacct_batch"))
    for job_id in ids_of(whole, "sacct_batch"):
        listed = batch.get(job_id) or aggregate(job_id, task_accounting(batch, job_id))
        assert listed.state in TERMINAL_STATES, job_id
    running = parse_sacct(out(whole, "sacct_running_pending"))
    assert {a.state for a in running.values()} >= {"RUNNING", "PENDING"}


def test_the_ledgers_state_and_lookup_commands(whole):
    assert parse_state(out(whole, "state_running"), ids_of(whole, "state_running")[0]) == "RUNNING"
    assert parse_state(out(whole, "state_pending"), ids_of(whole, "state_pending")[0]) == "PENDING"
    assert parse_state(out(whole, "state_completed"), ids_of(whole, "state_completed")[0]) == "COMPLETED"
    assert parse_state(out(whole, "state_array_ended"), ids_of(whole, "state_array_ended")[0]) == "FAILED"
    assert parse_state(out(whole, "state_unknown"), ids_of(whole, "state_unknown")[0]) is None
    completed = ids_of(whole, "state_completed")[0]
    run_dir = re.search(r"run folder (\S+)\)", header(whole, "lookup_running")[1]).group(1)
    for name in ("lookup_running", "lookup_ended"):
        found = parse_lookup(out(whole, name), run_dir)
        assert found.job_ids == [completed] and found.now > 1.7e9 and found.newest_try_at is None


def test_active_jobs_of_the_garbage_collector(whole):
    array = re.search(r"ids=(\d+)", header(whole, "active_array")[0]).group(1)
    active, error = parse_active(out(whole, "active_array").strip().split("|", 1)[1])
    assert array in active and error is None
    assert parse_active(out(whole, "active_unknown").strip().split("|", 1)[1]) == (set(), None)
    assert parse_active(out(whole, "active_ended").strip().split("|", 1)[1])[1] is None


def test_cluster_facts(release):
    config = out(release, "scontrol_show_config")
    assert parse_max_array_size(config) == 1001 and config_value(config, "ClusterName")
    options = sbatch_options_from_help(out(release, "sbatch_help"))
    assert {"gpus-per-node", "signal", "array", "parsable", "requeue"} <= options
    assert out(release, "scontrol_show_hostnames").split() == ["n1", "n2", "n3"]
    assert re.search(r"NodeAddr=\S+", out(release, "scontrol_show_node"))
