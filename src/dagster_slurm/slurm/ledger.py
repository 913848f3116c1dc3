"""The job ledger of one step call on the cluster: which attempts were made, their jobs, what became of them.

Layout, under ``{base}/runs/{root run id}/{label}-{identity}/``::

    ledger.jsonl     one JSON line per event: {"n", "job_id", "run_id", "fingerprint", "job_name", "sbatch_timeout"}
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
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

from dagster_slurm.slurm.allocation import is_step
from dagster_slurm.slurm.array import base_job_id, belongs_to, overall_state
from dagster_slurm.slurm.parse import (
    JOB_ID,
    TERMINAL_STATES,
    normalise_state,
    only_unknown_job_ids,
    parse_sbatch_job_id,
)

LEDGER = "ledger.jsonl"
SBATCH_GUARD = "sbatch"
CLOSED = "closed"
GUARD_TAKEN = 75  # exit status of the submit command when the try was taken or the attempt closed
SUBMITTED = "dagster-slurm-job-id:"  # the submit command prints this and the job id once sbatch succeeded
ESTIMATE = "dagster-slurm-estimate|"  # ...and, before it, the cluster's time and sbatch --test-only's answer


@dataclass
class Attempt:
    n: int
    job_id: str | None = None
    run_id: str = ""
    fingerprint: str = ""
    job_name: str = ""
    reported: str | None = None  # the outcome an orchestrator reported; None while nobody consumed it
    sbatch_timeout: float = 0.0  # the cluster-side bound its sbatch tries ran under
    done: tuple[int, ...] = ()  # array attempts: the tasks that succeeded, as reported
    allocation: str = ""  # a step of a shared allocation: that allocation's folder

    def record(self) -> dict[str, object]:
        return {"n": self.n, "job_id": self.job_id, "run_id": self.run_id, "fingerprint": self.fingerprint,
                "job_name": self.job_name, "sbatch_timeout": self.sbatch_timeout,
                **({"allocation": self.allocation} if self.allocation else {})}


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
        if entry.get("job_id") and JOB_ID.match(str(entry["job_id"])):
            attempt.job_id = str(entry["job_id"])
            attempt.run_id = str(entry.get("run_id", ""))
            attempt.fingerprint = str(entry.get("fingerprint", ""))
            attempt.job_name = str(entry.get("job_name", ""))
            attempt.sbatch_timeout = float(entry.get("sbatch_timeout") or 0)
            attempt.allocation = str(entry.get("allocation") or "")
        if entry.get("reported"):
            attempt.reported = str(entry["reported"])
        if isinstance(entry.get("done"), list):
            attempt.done = tuple(int(i) for i in entry["done"] if isinstance(i, int))
    return attempts


def claims(names: list[str] | None) -> list[int]:
    """Attempt numbers claimed in a step-call folder listing, ascending."""
    return sorted(int(name) for name in names or [] if name.isdigit())


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
    """One remote command: take try k's guard of attempt n (stamped with the cluster's clock), check
    the attempt is not closed, sbatch (bounded on the cluster side by ``timeout``, so a hung sbatch
    cannot submit later), print the job id, record it in the ledger and write the lease.

    Exit ``GUARD_TAKEN`` if it may not submit. Read the outcome with :func:`parse_submit`."""
    q = shlex.quote
    run_dir = f"{folder}/{attempt.n}"
    guard = f"{SBATCH_GUARD}.{try_number}"
    record = ledger_line({**attempt.record(), "job_id": "JOBID"})
    fmt = record.replace("\\", "\\\\").replace("%", "%%").replace('"JOBID"', '"%s"').replace("\n", "\\n")
    lease = f"; touch {q(lease_dir)}/\"$jid\" 2>/dev/null" if lease_dir else ""
    # the first try asks Slurm when the job would start (same script and directives; bounded, never fatal)
    estimate = (f"{{ est=$(timeout -k 2 10 sbatch --test-only job.sh 2>&1 | grep ' to start at ' | tail -n 1); "
                f"[ -z \"$est\" ] || printf '{ESTIMATE}%s|%s\\n' \"$(date +%Y-%m-%dT%H:%M:%S)\" \"$est\"; true; }} && "
                if try_number == 0 else "")
    return (
        f"cd {q(run_dir)} && {estimate}{{ mkdir {guard} 2>/dev/null || exit {GUARD_TAKEN}; }} && date +%s > {guard}/at && "
        f"{{ [ ! -e {CLOSED} ] || exit {GUARD_TAKEN}; }} && "
        f"jid=$(umask 077; timeout -k 5 {max(1, math.ceil(sbatch_timeout))} sbatch --parsable job.sh) && "
        f"jid=${{jid%%;*}} && printf '{SUBMITTED}%s\\n' \"$jid\" && "
        f"printf {q(fmt)} \"$jid\" >> {q(folder + '/' + LEDGER)}{lease}"
    )


def parse_submit(stdout: str) -> str | None:
    """The job id the submit command printed, if sbatch succeeded (whatever happened after it)."""
    for line in stdout.splitlines():
        if line.startswith(SUBMITTED) and JOB_ID.match(line[len(SUBMITTED):].strip()):
            return parse_sbatch_job_id(line[len(SUBMITTED):])
    return None


# sbatch --test-only's answer, as each release words it (stderr, recorded in tests/data/slurm/releases/):
#   22.05, 24.11: "sbatch: Job 2420 to start at 2026-12-04T18:45:54 using 1 processors on nodes vm in partition debug"
#   26.05:        "sbatch: Job 253 to start at 2026-12-06T13:45:51 a using 1 processors on nodes forky in partition debug"
# (26.05 puts a stray word before "using"; behind a job without a time limit the year is far away, e.g. 6110).
_ESTIMATE = re.compile(r"to start at (\S+)(?:\s+\S+)*?\s+using \d+ processors on nodes (\S+) in partition (\S+)")


def parse_estimate(stdout: str) -> tuple[str, str, str, str] | None:
    """(cluster time when asked, expected start, nodes, partition) from the submit command's estimate line
    (sbatch --test-only's answer, see _ESTIMATE)."""
    for line in stdout.splitlines():
        if line.startswith(ESTIMATE):
            now, _, text = line[len(ESTIMATE):].partition("|")
            m = _ESTIMATE.search(text)
            if m:
                return now, m.group(1), m.group(2), m.group(3)
    return None


def unread_estimate(stdout: str) -> str | None:
    """sbatch --test-only's answer when the submit command got one that :func:`parse_estimate` cannot read
    (a Slurm release wording it anew): said in a warning rather than dropped without a word."""
    for line in stdout.splitlines():
        if line.startswith(ESTIMATE) and parse_estimate(line) is None:
            return line[len(ESTIMATE):].partition("|")[2].strip()
    return None


def append_command(folder: str, record: dict[str, object]) -> str:
    """Append one record (e.g. ``{"n": 0, "reported": "FAILED"}``, or a repaired job line) to the ledger."""
    return f"printf '%s' {shlex.quote(ledger_line(record))} >> {shlex.quote(folder + '/' + LEDGER)}"


def _tool(command: str) -> str:
    """Run a Slurm tool with its stderr and exit status in the output: failures are never mistaken for
    'no such job'."""
    return f'{{ {command}; echo "rc=$?"; }} 2>&1'


class SlurmUnavailable(Exception):
    """squeue or sacct failed: nothing can be concluded about a job."""


def state_command(job_id: str) -> str:
    """The state of one job: squeue first (it knows queued jobs at once), then sacct (ended jobs). A step
    of a shared allocation (``123.4``): its own sacct line (running steps have one too)."""
    if is_step(job_id):
        return "echo rc=0; echo @@; " + _tool(f"sacct -P -n -o JobID,State -j {job_id}")
    return (_tool(f"squeue -h -t all -o '%i|%T' -j {job_id}") + "; echo @@; "
            + _tool(f"sacct -X -P -n -o JobID,State -j {job_id}"))


def _section(text: str, tool: str) -> list[list[str]]:
    """Data rows of one tool's output; raises SlurmUnavailable if it failed (an unknown job id is no failure)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    rc = lines.pop() if lines and lines[-1].startswith("rc=") else "rc=?"
    rows = [line.split("|") for line in lines if "|" in line and "error" not in line]
    errors = [line for line in lines if "|" not in line or "error" in line]
    if rc != "rc=0" and not only_unknown_job_ids(errors):
        raise SlurmUnavailable(f"{tool} failed ({rc}): {' '.join(errors)[-300:] or 'no message'}")
    return rows


def parse_state(stdout: str, job_id: str) -> str | None:
    """The job's state from :func:`state_command` output; ``None`` when neither knows it (gone).
    Raises ``SlurmUnavailable`` when that cannot be told: sacct failed, or squeue failed and sacct
    has no record of the job (yet)."""
    queue, _, acct = stdout.partition("@@")
    try:
        rows, queue_error = _section(queue, "squeue"), None
    except SlurmUnavailable as exc:
        rows, queue_error = [], exc
    accounted = _section(acct, "sacct")
    for row in rows + accounted:
        if len(row) >= 2 and row[0] == job_id:
            return normalise_state(row[1])
    # an array job: squeue and sacct list its tasks (123_4, 123_[5-9]); one state for all of them
    queued = [normalise_state(r[1]) for r in rows if len(r) >= 2 and belongs_to(r[0], job_id)]
    if any(state not in TERMINAL_STATES for state in queued):
        return overall_state(queued)
    tasks = [normalise_state(r[1]) for r in accounted if len(r) >= 2 and belongs_to(r[0], job_id)] or queued
    if tasks:
        return overall_state(tasks)
    if queue_error is not None:
        raise queue_error
    return None


def lookup_command(job_name: str, run_dir: str) -> str:
    """Jobs named ``job_name`` (the user's, queued or in accounting for a week), the cluster's clock,
    and when the newest sbatch try of the attempt began (by the same clock). Used when an sbatch
    answer was lost."""
    q = shlex.quote
    return (
        _tool(f"squeue -h -t all -u \"$(id -un)\" -n {q(job_name)} -o '%i|%Z'") + "; echo @@; "
        + _tool(f"sacct -X -P -n -S now-7days -u \"$(id -un)\" --name {q(job_name)} -o JobID,WorkDir")
        + f"; echo @@; date +%s; g=$(cat {q(run_dir)}/{SBATCH_GUARD}.*/at 2>/dev/null | sort -n | tail -n 1); "
        'echo "${g:--}"'
    )


@dataclass(frozen=True)
class Lookup:
    job_ids: list[str] = field(default_factory=list)  # jobs of that name whose working directory is run_dir
    now: float = 0.0  # the cluster's clock
    newest_try_at: float | None = None  # None: no sbatch try was ever started


def parse_lookup(stdout: str, run_dir: str) -> Lookup:
    """Raises ``SlurmUnavailable`` if squeue or sacct failed (then nothing is proven)."""
    sections = stdout.split("@@")
    if len(sections) < 3:
        raise SlurmUnavailable(f"unexpected lookup output: {stdout[-300:]!r}")
    found: list[str] = []
    for text, tool in ((sections[0], "squeue"), (sections[1], "sacct")):
        for row in _section(text, tool):
            job_id, workdir = row[0], "|".join(row[1:])
            job_id = base_job_id(job_id)  # an array's tasks are one job
            if workdir.rstrip("/") == run_dir.rstrip("/") and JOB_ID.match(job_id) and job_id not in found:
                found.append(job_id)
    clock = sections[2].split()
    if not clock or not clock[0].isdigit():
        raise SlurmUnavailable(f"the cluster's clock could not be read: {sections[2][-100:]!r}")
    taken = float(clock[1]) if len(clock) > 1 and clock[1].isdigit() else None
    return Lookup(found, float(clock[0]), taken)
