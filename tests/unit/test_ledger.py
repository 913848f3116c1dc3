"""The step-call ledger: decisions, ledger lines, and the lookup/state commands' real recorded output."""

import json
import subprocess
from pathlib import Path

import pytest

from dagster_slurm.slurm.ledger import (
    Attempt,
    claims,
    decide,
    ledger_line,
    parse_ledger,
    parse_lookup,
    parse_state,
    reported_command,
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
        + ledger_line({"n": 0, "reported": "FAILED"})
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


def test_submit_command_writes_a_ledger_line_that_parses(tmp_path):
    """Run the rendered command in a real sh, with sbatch/timeout on PATH that only print a job id."""
    folder = tmp_path / "call"
    (folder / "3").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # timeout -k 5 T cmd...
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho '1234;cluster'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    attempt = _job(n=3, job_id=None, run_id="r%s\\n'x")  # printf and quote metacharacters survive
    command = submit_command(str(folder), attempt, 0, sbatch_timeout=30, lease_dir=str(tmp_path / "leases"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    (tmp_path / "leases").mkdir()
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1234"
    assert (tmp_path / "leases" / "1234").exists()
    subprocess.run(["sh", "-c", reported_command(str(folder), 3, "COMPLETED")], check=True)
    recorded = parse_ledger((folder / "ledger.jsonl").read_text())[3]
    assert (recorded.job_id, recorded.run_id, recorded.reported) == ("1234", "r%s\\n'x", "COMPLETED")
    # the same try again, or any try once the attempt is closed: refused, nothing submitted
    again = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert again.returncode == 75
    (folder / "3" / "closed").mkdir()
    closed = submit_command(str(folder), attempt, 1, sbatch_timeout=30, lease_dir=None)
    assert subprocess.run(["sh", "-c", closed], capture_output=True, env=env).returncode == 75
    assert len((folder / "ledger.jsonl").read_text().splitlines()) == 2


def test_state_from_recorded_output():
    for name, expected in [("state_completed", "COMPLETED"), ("state_pending", "PENDING"), ("state_unknown", None)]:
        rec = RECORDED[name]
        assert parse_state(rec["stdout"], rec["job_id"]) == expected


def test_lookup_from_recorded_output():
    found = RECORDED["lookup_found"]
    lookup = parse_lookup(found["stdout"], found["run_dir"])
    assert lookup.job_ids == ["57"]  # same name, other working directories are other jobs
    assert lookup.now > 1.7e9 and lookup.newest_try_at is None
    none = RECORDED["lookup_not_found_with_tries"]
    lookup = parse_lookup(none["stdout"], none["run_dir"])
    assert lookup.job_ids == [] and lookup.newest_try_at == lookup.now
    assert parse_lookup("garbage", "/x") .now == 0.0
