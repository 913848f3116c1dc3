"""Job arrays, pure parts: --array specs, chunking, and Slurm's array outputs recorded on the test cluster
(array job 47: six tasks 0-5%2, task 3 exits 1; tests/data/slurm/*array*.txt, scontrol_show_config.txt)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from recorded_transport import RecordedTransport

from dagster_slurm.slurm.array import (
    aggregate,
    array_spec,
    chunk_ranges,
    expand_spec,
    parse_max_array_size,
    spec_of_script,
    task_accounting,
)
from dagster_slurm.slurm.ledger import parse_ledger, parse_state
from dagster_slurm.slurm.parse import parse_active, parse_sacct, parse_squeue
from dagster_slurm.slurm.script import JobScript, render_job_script, task_env_case
from dagster_slurm.slurm.watcher import JobWatcher

DATA = Path(__file__).parents[1] / "data" / "slurm"


def recorded(name: str) -> str:
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("# "))


@pytest.mark.parametrize(("ids", "throttle", "spec"), [
    (range(20), 4, "0-19%4"), ([3, 7, 9, 10, 11], None, "3,7,9-11"), ([5], None, "5"), ([1, 0, 2, 2], 1, "0-2%1"),
])
def test_array_spec_and_back(ids, throttle, spec):
    assert array_spec(ids, throttle) == spec
    assert expand_spec(spec) == sorted(set(ids))


def test_expand_spec_with_steps():
    assert expand_spec("0-8:4,10%3") == [0, 4, 8, 10]


def test_chunks_stay_below_max_array_size():
    assert chunk_ranges(2500, 1001) == [range(0, 1001), range(1001, 2002), range(2002, 2500)]
    assert chunk_ranges(3, 1001) == [range(0, 3)]


def test_max_array_size_from_scontrol():
    assert parse_max_array_size(recorded("scontrol_show_config.txt")) == 1001
    assert parse_max_array_size("MaxArraySize            = 40\n") == 40
    assert parse_max_array_size("") == 1001  # Slurm's default when the line is absent


def test_squeue_lists_running_tasks_and_the_pending_rest():
    queue = parse_squeue(recorded("squeue_array_running.txt"))
    assert set(queue) == {"47_0", "47_1", "47_[2-5%2]"}
    assert queue["47_[2-5%2]"].reason == "JobArrayTaskLimit"


def test_gc_sees_an_array_as_active_by_its_job_id():
    listed = ",".join(recorded("active_array_ids.txt").split())
    active, error = parse_active(f"0|{listed}")
    assert error is None and "47" in active and "47_[2-5%2]" in active
    active, _ = parse_active("0|9_[3,7-8],9_1")  # a pending rest with commas stays one item
    assert active == {"9", "9_1", "9_[3,7-8]"}


def sacct_fields(name: str) -> str:
    return re.search(r"sacct -P -n -o (\S+) -j ", (DATA / name).read_text()).group(1)


def test_sacct_per_task_and_the_array_as_one():
    lagging = parse_sacct(recorded("sacct_array.txt"), sacct_fields("sacct_array.txt"))  # recorded with fewer fields
    tasks = task_accounting(lagging, "47")
    assert sorted(tasks) == [0, 1, 2, 3, 5]  # task 4 had no record yet: accounting lags
    assert tasks[3].state == "FAILED" and tasks[3].exit_code == "1:0" and tasks[0].max_rss_bytes == 3388 * 1024
    whole = aggregate("47", tasks)
    assert whole.state == "FAILED" and whole.job_id == "47"
    ended = task_accounting(parse_sacct(recorded("sacct_array_throttled.txt")), "2065")
    assert sorted(ended) == [0, 1, 2, 3, 4, 5] and ended[3].state == "FAILED" and ended[3].exit_code == "1:0"
    assert [ended[i].queue_wait_seconds for i in range(6)] == [0, 0, 3, 3, 6, 6]  # %2: two at a time
    whole = aggregate("2065", ended)
    assert (whole.state, whole.queue_wait_seconds, whole.time_limit_seconds) == ("FAILED", 0, 60)


def test_ledger_state_of_an_ended_array():
    assert parse_state(recorded("state_array_ended.txt"), "47") == "FAILED"
    assert parse_state(recorded("state_array_ended.txt"), "48") is None


def test_ledger_keeps_the_done_tasks():
    text = ('{"n":0,"job_id":"47","run_id":"r","fingerprint":"f","job_name":"j"}\n'
            '{"n":0,"reported":"FAILED","done":[0,1,2,4,5]}\n')
    assert parse_ledger(text)[0].done == (0, 1, 2, 4, 5)


def test_watcher_keeps_a_pending_jobs_expected_start():
    transport = RecordedTransport({"squeue": recorded("squeue_pending_start.txt"), "sacct": ""})
    watcher = JobWatcher(transport, 0.05, 0.1)
    handle = watcher.watch("2499")
    watcher.tick([handle])
    assert (handle.state, handle.reason, handle.start) == ("PENDING", "Resources", "2026-12-04T18:59:12")
    watcher.forget("2499")


def test_watcher_follows_an_array_to_its_end():
    transport = RecordedTransport({"squeue": recorded("squeue_array_throttled.txt"),
                                   "sacct": recorded("sacct_array_throttled.txt")})
    watcher = JobWatcher(transport, 0.05, 0.1)
    handle = watcher.watch("2065")  # its own loop ticks too: the state is asserted, not which tick set it
    watcher.tick([handle])
    assert handle.state == "RUNNING" and handle.final is None  # running tasks and a pending rest: active
    transport.answers["squeue"] = ""  # all tasks left the queue
    watcher.tick([handle])
    assert handle.wait(5)
    assert handle.final is not None and handle.final.state == "FAILED" and handle.final.job_id == "2065"
    watcher.forget("2065")


def test_array_job_script_runs_each_task_with_its_own_env(tmp_path):
    run = str(tmp_path)
    env = tmp_path / "env.sh"
    env.write_text(task_env_case({0: {"WHO": "zero"}, 3: {"WHO": "it's three"}}))
    script = render_job_script(JobScript("j", run, ["sh", "-c", 'echo "$WHO" > who.$SLURM_ARRAY_TASK_ID'],
                                         env_file=str(env), array="0,3%1"))
    assert "#SBATCH --array=0,3%1" in script and f"#SBATCH --output={run}/stdout.%a.log" in script
    assert spec_of_script(script) == "0,3%1"
    (tmp_path / "job.sh").write_text(script)
    for task in ("0", "3"):
        done = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=run, env={**os.environ, "SLURM_ARRAY_TASK_ID": task})
        assert done.returncode == 0
    assert (tmp_path / "who.3").read_text() == "it's three\n" and (tmp_path / "who.0").read_text() == "zero\n"
    assert (tmp_path / "exit_code.3").read_text() == "0\n" and not (tmp_path / "exit_code").exists()


def test_a_refusal_for_the_submit_limit_says_what_to_do():
    from dagster_slurm.slurm.parse import submit_limit_hint

    text = "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates " \
           "accounting/QOS policy (job submit limit, user's size and/or time limits)"
    assert "MaxSubmitJobs" in submit_limit_hint(text) and "max_partitions_per_run" in submit_limit_hint(text)
    assert submit_limit_hint("sbatch: error: invalid partition specified: nope") == ""
