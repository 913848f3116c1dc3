"""The job ledger of one step call on the cluster: which attempts were made, their jobs, what became of them.

Layout, under ``{base}/runs/{root run id}/{label}-{identity}/``::

    ledger.jsonl     one JSON line per event: {"n", "job_id", "run_id", "fingerprint", "job_name", "at"}
                     when attempt n was submitted, {"n", "reported": STATE} when an orchestrator consumed it
    0/, 1/, ...      attempt folders (the job's run folder). Creating one (mkdir, atomic) claims attempt n.
    n/job.sh         the job script; a comment in it holds the attempt's record (to repair the ledger
                     after a lost sbatch answer)
    n/sbatch.k/      created (mkdir, atomic) right before the k-th sbatch try of attempt n (the
                     claimer retries only when try k provably submitted nothing)
    n/closed/        made by a process that found attempt n unfinished (claimer gone): no further try
                     of attempt n may start, so after the newest try's cluster-side timeout, a job
                     that is in neither squeue nor sacct was never submitted

Pure: rendering of the remote commands and parsing of what they print, and the decision what to do.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Literal

from dagster_slurm.slurm.parse import TERMINAL_STATES, normalise_state

LEDGER = "ledger.jsonl"
SBATCH_GUARD = "sbatch"
CLOSED = "closed"
GUARD_TAKEN = 75  # exit status of the submit command when the try was taken or the attempt closed


@dataclass
class Attempt:
    n: int
    job_id: str | None = None
    run_id: str = ""
    fingerprint: str = ""
    job_name: str = ""
    reported: str | None = None  # the outcome an orchestrator reported; None while nobody consumed it
    sbatch_timeout: float = 0.0  # the cluster-side bound its sbatch tries ran under

    def record(self) -> dict[str, object]:
        return {"n": self.n, "job_id": self.job_id, "run_id": self.run_id, "fingerprint": self.fingerprint,
                "job_name": self.job_name, "sbatch_timeout": self.sbatch_timeout}


def parse_ledger(text: str) -> dict[int, Attempt]:
    """Merge ledger lines into one ``Attempt`` per attempt number. Torn or foreign lines are skipped."""
    attempts: dict[int, Attempt] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            n = int(entry["n"])
        except (ValueError, KeyError, TypeError):
            continue
        attempt = attempts.setdefault(n, Attempt(n))
        if entry.get("job_id"):
            attempt.job_id = str(entry["job_id"])
            attempt.run_id = str(entry.get("run_id", ""))
            attempt.fingerprint = str(entry.get("fingerprint", ""))
            attempt.job_name = str(entry.get("job_name", ""))
            attempt.sbatch_timeout = float(entry.get("sbatch_timeout") or 0)
        if entry.get("reported"):
            attempt.reported = str(entry["reported"])
    return attempts


def claims(names: list[str] | None) -> list[int]:
    """Attempt numbers claimed in a step-call folder listing, ascending."""
    return sorted(int(name) for name in names or [] if name.isdigit())


ACTIVE = "active"


@dataclass(frozen=True)
class Decision:
    action: Literal["submit", "reattach", "adopt"]
    why: str
    attempt: Attempt | None = None
    still_running: Attempt | None = None  # an older job of this step call that is still queued or running


def decide(latest: Attempt | None, state: str | None, fingerprint: str, messages_present: bool) -> Decision:
    """What to do with the latest submitted attempt of this step call.

    ``state``: the job's Slurm state (``None``: neither squeue nor sacct knows it).
    """
    if latest is None or latest.job_id is None:
        return Decision("submit", "no earlier job")
    job = f"Slurm job {latest.job_id}"
    if latest.reported is not None:
        return Decision("submit", f"{job} already ended {latest.reported} and was reported; a new attempt")
    active = state is not None and state not in TERMINAL_STATES
    if latest.fingerprint != fingerprint:
        return Decision("submit", f"{job} ran an older version of this step", latest,
                        still_running=latest if active else None)
    if active:
        return Decision("reattach", f"{job} is {state}", latest)
    if state == "COMPLETED" and messages_present:
        return Decision("adopt", f"{job} COMPLETED while no orchestrator watched it", latest)
    if state == "COMPLETED":
        return Decision("submit", f"{job} COMPLETED but its files are gone", latest)
    return Decision("submit", f"{job} ended {state or 'and left no record'}", latest)


def ledger_line(record: dict[str, object]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def submit_command(folder: str, attempt: Attempt, try_number: int, *, sbatch_timeout: float,
                   lease_dir: str | None) -> str:
    """One remote command: take try k's guard of attempt n, check the attempt is not closed, sbatch
    (bounded on the cluster side by ``timeout``, so a hung sbatch cannot submit later), record the job
    in the ledger and write the lease. Exit ``GUARD_TAKEN`` if it may not submit; prints the job id."""
    q = shlex.quote
    run_dir = f"{folder}/{attempt.n}"
    record = ledger_line({**attempt.record(), "job_id": "JOBID"})
    fmt = record.replace("\\", "\\\\").replace("%", "%%").replace('"JOBID"', '"%s"').replace("\n", "\\n")
    lease = f" && {{ touch {q(lease_dir)}/\"$jid\" 2>/dev/null || true; }}" if lease_dir else ""
    return (
        f"cd {q(run_dir)} && {{ mkdir {SBATCH_GUARD}.{try_number} 2>/dev/null || exit {GUARD_TAKEN}; }} && "
        f"{{ [ ! -e {CLOSED} ] || exit {GUARD_TAKEN}; }} && "
        f"jid=$(timeout -k 5 {int(sbatch_timeout)} sbatch --parsable job.sh) && jid=${{jid%%;*}} && "
        f"printf {q(fmt)} \"$jid\" >> {q(folder + '/' + LEDGER)}{lease} && printf '%s\\n' \"$jid\""
    )


def reported_command(folder: str, n: int, state: str) -> str:
    return f"printf '%s' {shlex.quote(ledger_line({'n': n, 'reported': state}))} >> {shlex.quote(folder + '/' + LEDGER)}"


def state_command(job_id: str) -> str:
    """The state of one job: squeue first (it knows queued jobs at once), then sacct (ended jobs)."""
    return (f"squeue -h -t all -o '%i|%T' -j {job_id} 2>/dev/null; echo @@; "
            f"sacct -X -P -n -o JobID,State -j {job_id} 2>/dev/null")


def parse_state(stdout: str, job_id: str) -> str | None:
    """The job's state from :func:`state_command` output; ``None`` when neither knows it."""
    queue, _, acct = stdout.partition("@@")
    for section in (queue, acct):
        for line in section.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0] == job_id:
                return normalise_state(parts[1])
    return None


def lookup_command(job_name: str, run_dir: str) -> str:
    """Jobs named ``job_name`` (the user's, queued or in accounting for a week), the cluster's clock,
    and when the newest sbatch try of the attempt began. Used when an sbatch answer was lost."""
    q = shlex.quote
    return (
        f"squeue -h -t all -u \"$(id -un)\" -n {q(job_name)} -o '%i|%Z' 2>/dev/null; echo @@; "
        f"sacct -X -P -n -S now-7days -u \"$(id -un)\" --name {q(job_name)} -o JobID,WorkDir 2>/dev/null; "
        f"echo @@; date +%s; g=$(stat -c %Y {q(run_dir)}/{SBATCH_GUARD}.* 2>/dev/null | sort -n | tail -n 1); "
        'echo "${g:--}"'
    )


@dataclass(frozen=True)
class Lookup:
    job_ids: list[str] = field(default_factory=list)  # jobs of that name whose working directory is run_dir
    now: float = 0.0  # the cluster's clock
    newest_try_at: float | None = None  # None: no sbatch try was ever started


def parse_lookup(stdout: str, run_dir: str) -> Lookup:
    sections = stdout.split("@@")
    if len(sections) < 3:
        return Lookup()
    found: list[str] = []
    for section in sections[:2]:
        for line in section.splitlines():
            job_id, sep, workdir = line.strip().partition("|")
            if sep and workdir.rstrip("/") == run_dir.rstrip("/") and job_id.isdigit() and job_id not in found:
                found.append(job_id)
    clock = sections[2].split()
    now = float(clock[0]) if clock and clock[0].isdigit() else 0.0
    taken = float(clock[1]) if len(clock) > 1 and clock[1].isdigit() else None
    return Lookup(found, now, taken)
