"""The step-call ledger: decisions, ledger lines, and the lookup/state commands' real recorded output."""

import json
import subprocess
from pathlib import Path

import pytest

from dagster_slurm.slurm.ledger import (
    Attempt,
    SlurmUnavailable,
    append_command,
    claims,
    decide,
    ledger_line,
    parse_ledger,
    parse_lookup,
    parse_state,
    parse_submit,
    submit_command,
)

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "slurm" / "ledger_commands.json").read_text())
FP = "f" * 64


def _job(**kw) -> Attempt:
    return Attempt(**{"n": 0, "job_id": "41", "run_id": "run-a", "fingerprint": FP, "job_name": "dagster-x", **kw})


@pytest.mark.parametrize(
    "latest, state, fingerprint, present, action, still_running",
    [
        (None, None, FP, False, "submit", False),
        (Attempt(0), None, FP, False, "submit", False),  # claimed, never submitted
        (_job(), "RUNNING", FP, True, "reattach", False),
        (_job(), "PENDING", FP, False, "reattach", False),
        (_job(), "COMPLETED", FP, True, "adopt", False),
        (_job(), "COMPLETED", FP, False, "submit", False),  # its files are gone
        (_job(), "FAILED", FP, True, "submit", False),
        (_job(), "CANCELLED", FP, True, "submit", False),
        (_job(), None, FP, False, "submit", False),  # neither squeue nor sacct knows it
        (_job(fingerprint="0" * 64), "RUNNING", FP, True, "submit", True),  # code changed: new job, warn
        (_job(fingerprint="0" * 64), "COMPLETED", FP, True, "submit", False),
        (_job(reported="COMPLETED"), "COMPLETED", FP, True, "submit", False),  # consumed: a new attempt
        (_job(reported="FAILED"), "RUNNING", FP, True, "submit", False),
    ],
)
def test_decide(latest, state, fingerprint, present, action, still_running):
    decision = decide(latest, state, fingerprint, present)
    assert decision.action == action
    assert (decision.still_running is not None) == still_running
    if action != "submit":
        assert decision.attempt is latest


def test_ledger_lines_merge_per_attempt_and_skip_torn_lines():
    text = (
        ledger_line(_job().record())
        + ledger_line({"n": 0, "reported": "FAILED"})  # what append_command writes
        + ledger_line(_job(n=1, job_id="42", run_id="run-b").record())
        + '{"n": 2, "job_id": "4'  # torn by a crash
        + "\nnot json\n"
    )
    attempts = parse_ledger(text)
    assert sorted(attempts) == [0, 1]
    assert attempts[0].reported == "FAILED" and attempts[0].job_id == "41"
    assert attempts[1].job_id == "42" and attempts[1].run_id == "run-b" and attempts[1].reported is None


def test_claims_are_the_numeric_entries():
    assert claims(["ledger.jsonl", "10", "2", "0", "closed"]) == [0, 2, 10]
    assert claims(None) == []


def _stub_path(tmp_path, sbatch: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "timeout").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # timeout -k 5 T cmd...
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\n{sbatch}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_submit_command_writes_a_ledger_line_that_parses(tmp_path):
    """Run the rendered command in a real sh, with sbatch/timeout on PATH that only print a job id:
    this tests our shell text (guards, quoting, the ledger line), not Slurm."""
    folder = tmp_path / "call"
    (folder / "3").mkdir(parents=True)
    env = _stub_path(tmp_path, "echo '1234;cluster'")
    attempt = _job(n=3, job_id=None, run_id="r%s\\n'x")  # printf and quote metacharacters survive
    command = submit_command(str(folder), attempt, 0, sbatch_timeout=30, lease_dir=str(tmp_path / "leases"))
    (tmp_path / "leases").mkdir()
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert parse_submit(out.stdout) == "1234"
    assert (tmp_path / "leases" / "1234").exists()
    assert (folder / "3" / "sbatch.0" / "at").read_text().strip().isdigit()  # the try's start, cluster clock
    subprocess.run(["sh", "-c", append_command(str(folder), {"n": 3, "reported": "COMPLETED"})], check=True)
    recorded = parse_ledger((folder / "ledger.jsonl").read_text())[3]
    assert (recorded.job_id, recorded.run_id, recorded.reported) == ("1234", "r%s\\n'x", "COMPLETED")
    # the same try again, or any try once the attempt is closed: refused, nothing submitted
    again = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert again.returncode == 75 and parse_submit(again.stdout) is None
    (folder / "3" / "closed").mkdir()
    closed = submit_command(str(folder), attempt, 1, sbatch_timeout=30, lease_dir=None)
    assert subprocess.run(["sh", "-c", closed], capture_output=True, env=env).returncode == 75
    assert len((folder / "ledger.jsonl").read_text().splitlines()) == 2


def test_submitted_job_is_reported_even_if_the_ledger_cannot_be_written(tmp_path):
    folder = tmp_path / "call"
    (folder / "0").mkdir(parents=True)
    (folder / "ledger.jsonl").mkdir()  # appending to it fails
    env = _stub_path(tmp_path, "echo 77")
    out = subprocess.run(["sh", "-c", submit_command(str(folder), _job(job_id=None), 0, sbatch_timeout=0.2,
                                                     lease_dir=None)], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and parse_submit(out.stdout) == "77"
    assert "timeout -k 5 1 sbatch" in submit_command(str(folder), _job(), 0, sbatch_timeout=0.2, lease_dir=None)


def test_rejected_sbatch_prints_no_job_id(tmp_path):
    (tmp_path / "call" / "0").mkdir(parents=True)
    env = _stub_path(tmp_path, "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1")
    out = subprocess.run(["sh", "-c", submit_command(str(tmp_path / "call"), _job(job_id=None), 0, sbatch_timeout=5,
                                                     lease_dir=None)], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and parse_submit(out.stdout) is None and "invalid partition" in out.stderr


def test_state_from_recorded_output():
    for name, expected in [("state_completed", "COMPLETED"), ("state_pending", "PENDING"), ("state_unknown", None),
                           ("state_controller_down", "COMPLETED")]:  # squeue down, sacct knows it
        rec = RECORDED[name]
        assert parse_state(rec["stdout"], rec["job_id"]) == expected, name


def test_state_is_unknown_when_squeue_fails_and_sacct_has_no_record():
    rec = RECORDED["state_controller_down"]
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        parse_state(rec["stdout"], "999999")


def test_lookup_from_recorded_output():
    found = RECORDED["lookup_found"]
    lookup = parse_lookup(found["stdout"], found["run_dir"])
    assert len(lookup.job_ids) == 1  # same name, other working directories are other jobs
    assert lookup.now > 1.7e9 and lookup.newest_try_at is None
    none = RECORDED["lookup_not_found_with_tries"]
    lookup = parse_lookup(none["stdout"], none["run_dir"])
    assert lookup.job_ids == [] and lookup.newest_try_at == lookup.now
    with pytest.raises(SlurmUnavailable):
        parse_lookup("garbage", "/x")
    down = RECORDED["lookup_controller_down"]
    with pytest.raises(SlurmUnavailable, match="squeue failed"):  # nothing may be concluded
        parse_lookup(down["stdout"], down["run_dir"])


# sbatch --test-only's answer, recorded from slurm-wlm 22.05.8 (stderr)
TEST_ONLY = "sbatch: Job 2420 to start at 2026-12-04T18:45:54 using 1 processors on nodes vm in partition debug"


def test_the_first_try_asks_when_the_job_would_start(tmp_path):
    from dagster_slurm.slurm.ledger import parse_estimate

    (tmp_path / "call" / "0").mkdir(parents=True)
    env = _stub_path(tmp_path, f'case "$1" in --test-only) echo "{TEST_ONLY}" >&2 ;; *) echo 91 ;; esac')
    out = subprocess.run(["sh", "-c", submit_command(str(tmp_path / "call"), _job(job_id=None), 0, sbatch_timeout=5,
                                                     lease_dir=None)], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and parse_submit(out.stdout) == "91"
    now, start, nodes, partition = parse_estimate(out.stdout)
    assert (start, nodes, partition) == ("2026-12-04T18:45:54", "vm", "debug") and now[:2] == "20"
    later = submit_command(str(tmp_path / "call"), _job(job_id=None), 1, sbatch_timeout=5, lease_dir=None)
    assert "--test-only" not in later  # asked once, not on retries
    failing = _stub_path(tmp_path, 'case "$1" in --test-only) echo "sbatch: error: x" >&2; exit 1 ;; *) echo 92 ;; esac')
    (tmp_path / "call2" / "0").mkdir(parents=True)
    out = subprocess.run(["sh", "-c", submit_command(str(tmp_path / "call2"), _job(job_id=None), 0, sbatch_timeout=5,
                                                     lease_dir=None)], capture_output=True, text=True, env=failing)
    assert parse_submit(out.stdout) == "92" and parse_estimate(out.stdout) is None  # no estimate, still submitted


def test_estimate_text_and_metadata():
    from dagster_slurm.pipes.client import estimate_metadata, start_estimate_text

    estimate = ("2026-12-04T18:44:54", "2026-12-04T18:45:54", "vm", "debug")
    assert estimate_metadata(estimate) == {"slurm_expected_start": "2026-12-04T18:45:54", "slurm_expected_wait_seconds": 60}
    assert start_estimate_text("7", estimate) == ("Slurm expects job 7 to start at 2026-12-04T18:45:54 (cluster time), "
                                                  "in about 60 s, on vm in partition debug (sbatch --test-only).")
    assert estimate_metadata(None) == {}
