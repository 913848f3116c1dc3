"""parse.py against outputs recorded on a real Slurm 22.05.8 cluster (tests/data/slurm/).

Recordings are raw: ``*.txt`` files are stdout after a header of lines starting with ``# ``;
``*.json`` files hold stdout, stderr and exit status of one command. How each was produced:
the ``command`` in its header; the jobs were
  14 rec-timeout   --time=1 sleep 600                        -> TIMEOUT
  15 rec-completed python3 burning ~3 s CPU, ~40 MB list       -> COMPLETED
  16 rec-failed    exit 3                                     -> FAILED
  17 rec-oom       --mem=50M, python3 allocating 300 MB       -> OUT_OF_MEMORY
  18 rec-cancel    sleep 300, scancel while RUNNING           -> CANCELLED
  19..23           sleep/held/dependent jobs, snapshot, then scancel
  24 rec-completed-2cpu  -c 2, one core busy ~4 s, 100 MB     -> COMPLETED (efficiency ~0.5)
  26 script rendered by render_job_script (job_script_expected.sh) submitted with sbatch
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.slurm.parse import (
    GPU_FIELDS,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    TERMINAL_STATES,
    JobAccounting,
    normalise_state,
    parse_duration,
    parse_sacct,
    parse_sbatch_job_id,
    parse_size,
    parse_squeue,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def recorded(name: str) -> str:
    """Raw stdout of a ``.txt`` recording (its ``# `` header stripped)."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("# "):
        start += 1
    return "".join(lines[start:])


def fields_of(name: str) -> str:
    """The sacct fields a recording was made with (its ``# command:`` header)."""
    return re.search(r"sacct -P -n -o (\S+) -j ", (DATA / name).read_text()).group(1)


def sacct(name: str) -> dict[str, JobAccounting]:
    return parse_sacct(recorded(name), fields_of(name))


def recorded_json(name: str) -> dict:
    return json.loads((DATA / name).read_text())


# --- the recordings were made with exactly the constants the code uses --------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("sacct_*.txt")))
def test_sacct_recordings_name_their_fields(name):
    """Each recording was made with SACCT_FIELDS as it was then: today's list, or an earlier one that
    today's extends (Submit, Start, ReqMem and TimelimitRaw came later)."""
    assert SACCT_FIELDS.startswith(fields_of(name))


def test_recordings_with_todays_fields_exist():
    before_gpus = SACCT_FIELDS.rsplit(",", len(GPU_FIELDS))[0]  # recorded before the GPU fields were added
    assert {"sacct_waited.txt", "sacct_array_throttled.txt", "sacct_multinode_just_ended.txt"} <= {
        p.name for p in DATA.glob("sacct_*.txt") if fields_of(p.name) in (SACCT_FIELDS, before_gpus)}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("squeue_*")))
def test_squeue_recordings_use_squeue_format(name):
    """Today's SQUEUE_FORMAT, or the one before the start (%S) was added."""
    fmt = re.search(r"squeue -h -t all -o '([^']+)' -j ", (DATA / name).read_text()).group(1)
    assert fmt in (SQUEUE_FORMAT, SQUEUE_FORMAT.rsplit("|", 1)[0])


def test_a_pending_job_has_an_expected_start():
    queue = parse_squeue(recorded("squeue_pending_start.txt"))
    assert (queue["2499"].state, queue["2499"].reason, queue["2499"].start) == ("PENDING", "Resources",
                                                                                "2026-12-04T18:59:12")
    assert queue["2498"].start == "2026-12-04T18:58:12"  # running: when it started
    assert parse_squeue("7|PENDING|Priority|N/A\n")["7"].start == ""  # no estimate yet
    assert parse_squeue(recorded("squeue_running_pending.txt"))  # recorded without %S: still parsed


# --- sbatch --------------------------------------------------------------------------------------

def test_sbatch_parsable_stdout():
    raw = recorded("sbatch_parsable_stdout.txt")
    assert raw == "15\n"
    assert parse_sbatch_job_id(raw) == "15"


def test_sbatch_parsable_with_cluster_suffix():
    assert parse_sbatch_job_id("4242;cluster1\n") == "4242"


@pytest.mark.parametrize("name", ["sbatch_invalid_partition.json", "sbatch_invalid_time.json"])
def test_sbatch_errors_print_no_job_id(name):
    rec = recorded_json(name)
    assert rec["exit_status"] != 0
    assert rec["stdout"] == ""
    assert rec["stderr"].startswith("sbatch: error: ")
    with pytest.raises(DagsterSlurmError, match="no job id"):
        parse_sbatch_job_id(rec["stdout"])
    # nor may stderr be mistaken for a job id
    with pytest.raises(DagsterSlurmError):
        parse_sbatch_job_id(rec["stderr"])


def test_sbatch_error_texts():
    assert "invalid partition specified: nosuchpartition" in recorded_json("sbatch_invalid_partition.json")["stderr"]
    assert recorded_json("sbatch_invalid_partition.json")["exit_status"] == 1
    assert recorded_json("sbatch_invalid_time.json")["stderr"] == "sbatch: error: Invalid --time specification\n"
    assert recorded_json("sbatch_invalid_time.json")["exit_status"] == 255


# --- squeue --------------------------------------------------------------------------------------

def test_squeue_running_and_pending():
    jobs = parse_squeue(recorded("squeue_running_pending.txt"))
    assert {j: (e.state, e.reason) for j, e in jobs.items()} == {
        "14": ("RUNNING", ""),  # %r printed None
        "19": ("RUNNING", ""),
        "20": ("PENDING", "Resources"),
        "21": ("PENDING", "Priority"),
        "22": ("PENDING", "Dependency"),
        "23": ("PENDING", "JobHeldUser"),
    }
    assert all(e.job_id == j for j, e in jobs.items())
    assert not any(e.state in TERMINAL_STATES for e in jobs.values())


def test_squeue_reason_with_spaces_and_commas():
    jobs = parse_squeue(recorded("squeue_reason_with_spaces.txt"))
    assert jobs["25"].state == "PENDING"
    assert jobs["25"].reason == (
        "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    )
    assert jobs["24"].reason == "Resources"
    assert jobs["26"].reason == "Priority"
    assert jobs["14"].state == "RUNNING"


def test_squeue_terminal_states():
    jobs = parse_squeue(recorded("squeue_terminal.txt"))
    assert {j: e.state for j, e in jobs.items()} == {
        "14": "TIMEOUT", "15": "COMPLETED", "16": "FAILED", "17": "OUT_OF_MEMORY", "18": "CANCELLED",
        "19": "CANCELLED", "20": "CANCELLED", "21": "CANCELLED", "22": "CANCELLED", "23": "CANCELLED",
        "24": "COMPLETED", "26": "COMPLETED",
    }
    assert all(e.state in TERMINAL_STATES for e in jobs.values())
    assert jobs["14"].reason == "TimeLimit"
    assert jobs["16"].reason == "NonZeroExitCode"
    assert jobs["17"].reason == "OutOfMemory"


def test_squeue_unknown_job_id():
    """A single unknown id: exit status 1, empty stdout, message on stderr -> nothing parsed."""
    rec = recorded_json("squeue_invalid_id.json")
    assert rec["exit_status"] == 1
    assert rec["stdout"] == ""
    assert rec["stderr"] == "slurm_load_jobs error: Invalid job id specified\n"
    assert parse_squeue(rec["stdout"]) == {}
    assert parse_squeue(rec["stderr"]) == {}


def test_squeue_unknown_among_known_ids():
    """With several ids the unknown one is silently left out and squeue exits 0."""
    rec = recorded_json("squeue_mixed_valid_invalid.json")
    assert rec["exit_status"] == 0 and rec["stderr"] == ""
    jobs = parse_squeue(rec["stdout"])
    assert list(jobs) == ["19"]
    assert jobs["19"].state == "RUNNING"


def test_squeue_recently_finished_job_still_listed():
    """Until MinJobAge (300 s here) passes, squeue still reports a finished job."""
    rec = recorded_json("squeue_finished_recently.json")
    assert parse_squeue(rec["stdout"])["1"].state == "COMPLETED"


def test_squeue_purged_job():
    """After MinJobAge squeue forgets the job: same answer as for an id that never existed;
    sacct still has it."""
    rec = recorded_json("squeue_purged_id.json")
    assert (rec["exit_status"], rec["stdout"]) == (1, "")
    assert rec["stderr"] == recorded_json("squeue_invalid_id.json")["stderr"]
    assert parse_squeue(rec["stdout"]) == {}
    acct = one("sacct_purged_from_squeue.txt")
    assert (acct.job_id, acct.state, acct.exit_code) == ("1", "COMPLETED", "0:0")


def test_squeue_purged_among_known_ids():
    rec = recorded_json("squeue_purged_and_known_ids.json")
    assert (rec["exit_status"], rec["stderr"]) == (0, "")
    assert {j: e.state for j, e in parse_squeue(rec["stdout"]).items()} == {"15": "COMPLETED"}


# --- sacct ---------------------------------------------------------------------------------------

def one(name: str) -> JobAccounting:
    jobs = sacct(name)
    assert len(jobs) == 1, jobs
    return next(iter(jobs.values()))


def test_sacct_completed():
    acct = one("sacct_completed.txt")
    assert acct.job_id == "15"
    assert acct.state == "COMPLETED" and acct.terminal
    assert acct.exit_code == "0:0"
    assert acct.elapsed == "00:00:03" and acct.elapsed_seconds == 3
    assert acct.total_cpu_seconds == pytest.approx(3.028)
    # MaxRSS comes from the batch step (the job line has none)
    assert acct.max_rss_bytes == 48632 * 1024
    assert acct.ncpus == 1 and acct.nnodes == 1
    assert acct.partition == "debug" and acct.nodelist == "vm"
    assert 0 < acct.cpu_efficiency <= 1  # 3.028 s CPU in 3 s wall, capped at 1
    assert acct.cpu_efficiency == 1.0
    assert acct.node_hours == pytest.approx(3 / 3600)


def test_sacct_completed_two_cpus():
    acct = one("sacct_completed_2cpu.txt")
    assert acct.state == "COMPLETED" and acct.exit_code == "0:0"
    assert acct.ncpus == 2
    assert acct.max_rss_bytes == 112048 * 1024 > 100 * 2**20
    assert acct.cpu_efficiency == pytest.approx(4.025 / (4 * 2))
    assert 0 < acct.cpu_efficiency < 1


def test_sacct_failed():
    acct = one("sacct_failed.txt")
    assert acct.job_id == "16"
    assert acct.state == "FAILED" and acct.terminal
    assert acct.exit_code == "3:0"
    assert acct.exit_code.split(":")[0] == "3"
    assert acct.elapsed_seconds == 0
    assert acct.cpu_efficiency is None  # 0 s elapsed
    assert acct.max_rss_bytes is not None and acct.max_rss_bytes > 0


def test_sacct_out_of_memory():
    acct = one("sacct_out_of_memory.txt")
    assert acct.state == "OUT_OF_MEMORY" and acct.terminal
    assert acct.exit_code == "0:125"
    assert acct.max_rss_bytes == 3412 * 1024
    assert acct.total_cpu_seconds == pytest.approx(0.040)


def test_sacct_cancelled_while_running():
    acct = one("sacct_cancelled.txt")
    assert acct.job_id == "18"
    assert acct.state == "CANCELLED"  # raw: "CANCELLED by 1001"
    assert acct.terminal
    assert acct.exit_code == "0:0"  # the job line; the batch step says 0:15 (SIGTERM)
    assert acct.elapsed_seconds == 3  # job line, not the step's 4
    assert acct.max_rss_bytes is not None and acct.max_rss_bytes > 0


def test_sacct_cancelled_while_pending():
    jobs = sacct("sacct_cancelled_pending.txt")
    assert set(jobs) == {"19", "20", "21", "22", "23"}
    assert all(j.state == "CANCELLED" and j.terminal for j in jobs.values())
    never_ran = jobs["21"]
    assert never_ran.elapsed_seconds == 0
    assert never_ran.max_rss_bytes is None
    assert never_ran.cpu_efficiency is None
    assert never_ran.ncpus == 2
    assert never_ran.nodelist == "None assigned"
    meta = never_ran.metadata()
    assert "slurm_max_rss_bytes" not in meta and "slurm_cpu_efficiency" not in meta
    assert jobs["19"].elapsed_seconds == 20 and jobs["19"].max_rss_bytes == 3376 * 1024


def test_sacct_timeout():
    acct = one("sacct_timeout.txt")
    assert acct.job_id == "14"
    assert acct.state == "TIMEOUT" and acct.terminal  # the batch step says CANCELLED: job line wins
    assert acct.elapsed_seconds == 85 and acct.elapsed == "00:01:25"
    assert acct.total_cpu_seconds == pytest.approx(0.002)
    assert 0 < acct.cpu_efficiency < 0.001
    assert acct.max_rss_bytes == 3204 * 1024


def test_sacct_running_and_pending():
    jobs = sacct("sacct_running_pending.txt")
    assert {j: a.state for j, a in jobs.items()} == {
        "19": "RUNNING", "20": "PENDING", "21": "PENDING", "22": "PENDING", "23": "PENDING"}
    assert not any(a.terminal for a in jobs.values())
    assert jobs["19"].elapsed_seconds == 15
    assert jobs["19"].max_rss_bytes is None  # not sampled yet: empty on job and step line
    assert jobs["19"].total_cpu_seconds == 0.0


def test_sacct_rendered_script_job():
    acct = one("sacct_rendered_script.txt")
    assert acct.job_id == "317" and acct.state == "COMPLETED" and acct.exit_code == "0:0"


def test_sacct_batch_of_jobs():
    jobs = sacct("sacct_batch.txt")
    assert {j: (a.state, a.exit_code) for j, a in jobs.items()} == {
        "14": ("TIMEOUT", "0:0"),
        "15": ("COMPLETED", "0:0"),
        "16": ("FAILED", "3:0"),
        "17": ("OUT_OF_MEMORY", "0:125"),
        "18": ("CANCELLED", "0:0"),
        "24": ("COMPLETED", "0:0"),
    }
    # per-job MaxRSS is each job's own steps', never another job's
    assert jobs["15"].max_rss_bytes == 48632 * 1024
    assert jobs["24"].max_rss_bytes == 112048 * 1024
    assert jobs["14"].max_rss_bytes == 3204 * 1024
    # same result as parsing each job on its own
    for name in ("sacct_timeout.txt", "sacct_completed.txt", "sacct_failed.txt", "sacct_out_of_memory.txt",
                 "sacct_cancelled.txt", "sacct_completed_2cpu.txt"):
        single = one(name)
        assert jobs[single.job_id] == single


def test_sacct_unknown_job_id():
    rec = recorded_json("sacct_unknown_id.json")
    assert rec == {**rec, "stdout": "", "stderr": "", "exit_status": 0}
    assert parse_sacct(rec["stdout"]) == {}


def test_sacct_ignores_lines_with_wrong_field_count():
    text = "Some warning from sacct\n" + recorded("sacct_completed.txt") + "1|2|3\n"
    assert parse_sacct(text, fields_of("sacct_completed.txt")) == sacct("sacct_completed.txt")


def test_metadata_of_completed_job():
    meta = one("sacct_completed_2cpu.txt").metadata()
    assert meta == {
        "slurm_job_id": "24",
        "slurm_state": "COMPLETED",
        "slurm_exit_code": "0:0",
        "slurm_elapsed_seconds": 4,
        "slurm_node_hours": 0.00111,  # 4 s, three significant digits
        "slurm_cpus": 2,
        "slurm_cpu_efficiency_percent": 50.3,  # 4.025 CPU-s of 8
        "slurm_max_rss_mb": 109.4,  # 112048K
        "slurm_partition": "debug",
        "slurm_nodes": "vm",
    }


def test_metadata_of_a_job_that_waited_has_queue_wait_request_and_limit():
    """Recorded with today's fields: a 1-CPU job that waited 6 s behind a 2-CPU job."""
    acct = one("sacct_waited.txt")
    assert (acct.queue_wait_seconds, acct.requested_mem_bytes, acct.time_limit_seconds) == (6, 100 * 2**20, 120)
    meta = acct.metadata()
    assert meta["slurm_queue_wait_seconds"] == 6 and meta["slurm_time_limit_seconds"] == 120
    assert meta["slurm_requested_mem_mb"] == 100.0 and meta["slurm_max_rss_mb"] == 9.4  # 9612K
    assert meta["slurm_cpu_efficiency_percent"] == 100.0 and meta["slurm_node_hours"] == 0.000556
    # one value per quantity: no text twin of a number
    assert not {"slurm_elapsed", "slurm_max_rss_bytes", "slurm_cpu_efficiency"} & set(meta)
    assert all(isinstance(v, (int, float)) for k, v in meta.items() if k.endswith(("_seconds", "_mb", "_percent", "_hours")))


def test_metadata_of_failed_job_has_no_efficiency():
    meta = one("sacct_failed.txt").metadata()
    assert meta["slurm_state"] == "FAILED" and meta["slurm_exit_code"] == "3:0"
    assert "slurm_cpu_efficiency_percent" not in meta
    assert meta["slurm_max_rss_mb"] == 3.2  # 3252K
    assert meta["slurm_node_hours"] == 0  # it ran 0 s
    assert "slurm_queue_wait_seconds" not in meta  # recorded before Submit/Start were asked for


@pytest.mark.parametrize(("text", "ncpus", "nnodes", "expected"), [
    ("100M", 1, 1, 100 * 2**20), ("2G", 4, 2, 2 * 2**30), ("512Mc", 4, 1, 2 * 2**30), ("1Gn", 8, 3, 3 * 2**30),
    ("0", 1, 1, None), ("", 1, 1, None),
])
def test_requested_memory(text, ncpus, nnodes, expected):
    from dagster_slurm.slurm.parse import parse_requested_mem

    assert parse_requested_mem(text, ncpus, nnodes) == expected


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), ("30:15", 1815), ("01:00:00", 3600), ("2-12", 2 * 86400 + 12 * 3600),
    ("1-00:30", 86400 + 1800), ("1-02:03:04", 93784), ("UNLIMITED", None), ("", None),
])
def test_sbatch_time_limits(text, seconds):
    from dagster_slurm.slurm.parse import parse_time_limit

    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("2048", 2048 * 2**20),
                                            ("1.5G", int(1.5 * 2**30)), ("100K", 102400), ("lots", None)])
def test_sbatch_memory_requests(text, size):
    from dagster_slurm.slurm.parse import parse_mem_request

    assert parse_mem_request(text) == size


def test_right_after_the_end_missing_values_fall_back_to_the_request():
    """Recorded 0.2 s after the end: Partition empty, ReqMem '16?', TimelimitRaw empty (filled 1.5 s later)."""
    acct = one("sacct_just_ended.txt")
    assert (acct.partition, acct.requested_mem_bytes, acct.time_limit_seconds) == ("", None, None)
    meta = acct.metadata({"partition": "batch", "mem": "100M", "time": "3"})
    assert (meta["slurm_partition"], meta["slurm_requested_mem_mb"], meta["slurm_time_limit_seconds"]) == ("batch", 100.0, 180)
    assert not {"slurm_partition", "slurm_requested_mem_mb", "slurm_time_limit_seconds"} & set(acct.metadata())
    assert one("sacct_waited.txt").metadata({"mem": "1G", "time": "9"})["slurm_requested_mem_mb"] == 100.0  # sacct wins
    assert acct.metadata({"mem-per-cpu": "64M"})["slurm_requested_mem_mb"] == 64.0


@pytest.mark.parametrize(("text", "size"), [("vm", 1), ("n[1-3]", 3), ("n[1-3,7],gpu2", 5), ("None assigned", 0),
                                            ("", 0), ("a[01-10]", 10)])
def test_host_list_sizes(text, size):
    from dagster_slurm.slurm.parse import hostlist_size

    assert hostlist_size(text) == size


def test_a_multinode_job_right_after_its_end_lists_all_its_nodes():
    """Recorded: for seconds after the end the job row says n1; its srun step ran on n[1-3]."""
    acct = one("sacct_multinode_just_ended.txt")
    assert (acct.nnodes, acct.nodelist, acct.max_rss_bytes) == (3, "n[1-3]", 3340 * 1024)
    assert one("sacct_completed.txt").nodelist == "vm"  # one node: the job's own row


def test_a_pending_job_has_no_queue_wait_yet():
    line = "7|PENDING|0:0|00:00:00|0|00:00:00||1|1|debug|None assigned|2026-12-04T17:42:46|Unknown|100M|UNLIMITED\n"
    acct = parse_sacct(line)["7"]
    assert acct.queue_wait_seconds is None and acct.time_limit_seconds is None
    assert "slurm_queue_wait_seconds" not in acct.metadata() and "slurm_time_limit_seconds" not in acct.metadata()


def test_node_hours_uses_at_least_one_node():
    assert JobAccounting("1", "COMPLETED", "0:0", elapsed_seconds=7200, nnodes=0).node_hours == 2.0
    assert JobAccounting("1", "COMPLETED", "0:0", elapsed_seconds=1800, nnodes=4).node_hours == 2.0


def test_cpu_efficiency_capped_and_none():
    assert JobAccounting("1", "COMPLETED", "0:0", elapsed_seconds=10, ncpus=1,
                         total_cpu_seconds=25.0).cpu_efficiency == 1.0
    assert JobAccounting("1", "COMPLETED", "0:0", elapsed_seconds=10, ncpus=0).cpu_efficiency is None


# --- states, sizes, durations --------------------------------------------------------------------

@pytest.mark.parametrize("raw,state", [
    ("CANCELLED by 1001", "CANCELLED"),
    ("COMPLETED+", "COMPLETED"),
    ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
    ("  RUNNING  ", "RUNNING"),
    ("", "UNKNOWN"),
    ("   ", "UNKNOWN"),
])
def test_normalise_state(raw, state):
    assert normalise_state(raw) == state


@pytest.mark.parametrize("text,expected", [
    ("48632K", 48632 * 1024),
    ("3.5M", int(3.5 * 2**20)),
    ("2G", 2 * 2**30),
    ("1T", 2**40),
    ("1P", 2**50),
    ("0", 0),
    ("1234", 1234),
    (" 12K ", 12 * 1024),
    ("", None),
    (None, None),
    ("16?", None),
    ("abc", None),
    ("-5K", None),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1.2.3K", "."])
def test_parse_size_malformed_number(text):
    assert parse_size(text) is None


@pytest.mark.parametrize("text,seconds", [
    ("00:03.028", 3.028),        # TotalCPU, MM:SS.mmm
    ("00:00:00", 0.0),
    ("00:01:25", 85.0),          # Elapsed, HH:MM:SS
    ("01:02:03", 3723.0),
    ("1-02:03:04", 93784.0),     # D-HH:MM:SS
    ("2-00:00:00", 172800.0),
    ("12:34:56.789", 45296.789),
    ("59.5", 59.5),              # SS.mmm
    ("", 0.0),
    (None, 0.0),
    ("INVALID", 0.0),
    ("UNLIMITED", 0.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_of_recorded_total_cpu():
    for path in DATA.glob("sacct_*.txt"):
        names = fields_of(path.name).split(",")
        for line in recorded(path.name).splitlines():
            row = dict(zip(names, line.split("|")))
            assert parse_duration(row["TotalCPU"]) >= 0
            assert parse_duration(row["Elapsed"]) == int(row["ElapsedRaw"])


@pytest.mark.parametrize("stderr, transient", [
    ("sbatch: error: Batch job submission failed: Resource temporarily unavailable", True),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", True),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", False),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", False),
    ("sbatch: error: Invalid --time specification", False),
])
def test_transient_sbatch_errors(stderr, transient):
    from dagster_slurm.slurm.parse import is_transient_sbatch_error

    assert is_transient_sbatch_error(stderr) is transient


def test_partition_missing_right_after_the_end_falls_back_to_the_request():
    # sacct right after a job completed: slurmdbd has not filled the job row's Partition yet (seen ~2 s)
    fresh = "1328|COMPLETED|0:0|00:00:00|0|00:00.002||1|1||vm\n1328.batch|COMPLETED|0:0|00:00:00|0|00:00.002|3288K|1|1||vm\n"
    acct = parse_sacct(fresh, fields_of("sacct_completed.txt"))["1328"]
    assert acct.metadata({"partition": "batch"})["slurm_partition"] == "batch"
    assert "slurm_partition" not in acct.metadata()  # asked for none (the cluster default): left out, not ""
    assert sacct("sacct_completed.txt")["15"].metadata({"partition": "batch"})["slurm_partition"] == "debug"


def test_gpus_from_alloc_tres_and_their_use_where_recorded():
    from dagster_slurm.slurm.parse import tres_value

    assert tres_value("billing=2,cpu=2,gres/gpu=2,mem=256M,node=1", "gres/gpu") == 2
    assert tres_value("cpu=1,gres/gpu:a100=1,gres/gpu:v100=2", "gres/gpu") == 3  # typed only: their sum
    assert tres_value("cpu=1,gres/gpu=3,gres/gpu:a100=3", "gres/gpu") == 3  # the untyped total wins
    assert tres_value("billing=1,cpu=1,mem=256M,node=1", "gres/gpu") is None
    head = "JobID,State,ExitCode,Elapsed,ElapsedRaw,TotalCPU,MaxRSS,NCPUS,NNodes,Partition,NodeList,Submit,Start,ReqMem,TimelimitRaw"
    rows = ("9|COMPLETED|0:0|00:00:10|10|00:00:05||1|1|debug|vm|2026-12-04T17:42:46|2026-12-04T17:42:47|256M|5|"
            "billing=1,cpu=1,gres/gpu=2,mem=256M,node=1|\n"
            "9.batch|COMPLETED|0:0|00:00:10|10|00:00:05|1024K|1|1||vm|2026-12-04T17:42:47|2026-12-04T17:42:47|||"
            "cpu=1,mem=1M,node=1|cpu=00:00:05,gres/gpuutil=37,mem=1M\n")
    assert head + "," + ",".join(GPU_FIELDS) == SACCT_FIELDS
    acct = parse_sacct(rows)["9"]
    assert (acct.gpus, acct.gpu_util_percent) == (2, 37.0)
    meta = acct.metadata()
    assert (meta["slurm_gpus"], meta["slurm_gpu_utilization_percent"]) == (2, 37.0)
    assert "slurm_gpus" not in parse_sacct(rows.replace("gres/gpu=2,", ""))["9"].metadata()
