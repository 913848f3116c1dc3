"""Exactly one Slurm job per step call and attempt: find an earlier job of this call, or claim and submit one.

The remote ledger (``slurm/ledger.py`` has its layout) says which jobs this step call already has.
``place`` decides, before anything is staged, whether to reattach to a queued or running job, adopt
one that completed unobserved, or claim a new attempt folder; ``submit`` runs sbatch for a claimed
attempt and, when sbatch's answer is lost, looks the job up instead of submitting again.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagster_slurm.errors import (
    ConfigurationError,
    DagsterSlurmError,
    RemoteFileError,
    SlurmJobError,
    SSHConnectionError,
    tail,
)
from dagster_slurm.slurm.allocation import is_step, parse_step_probe, step_probe_command
from dagster_slurm.slurm.ledger import (
    CLOSED,
    GUARD_TAKEN,
    LEDGER,
    Attempt,
    Decision,
    SlurmUnavailable,
    append_command,
    claims,
    decide,
    lookup_command,
    parse_estimate,
    parse_ledger,
    parse_lookup,
    parse_state,
    parse_submit,
    state_command,
    submit_command,
    unread_estimate,
)
from dagster_slurm.slurm.parse import is_transient_sbatch_error, submit_limit_hint
from dagster_slurm.slurm.script import attempt_from_script
from dagster_slurm.transport.base import Transport

log = logging.getLogger("dagster_slurm.pipes")

SBATCH_TRIES = 5  # transient sbatch failures (busy controller) are retried after 1, 2, 4, 8 s
DROP_TIMEOUT = 30  # cluster-side bound of a step's drop script (pipes.allocation runs it under timeout)
LOOKUP_MARGIN = 15.0  # seconds after a try's cluster-side sbatch timeout before "not found" is proof
MAX_ROUNDS = 10  # claims lost to concurrent processes before giving up
STATE_TRIES = 4  # squeue/sacct failures tolerated when asking an earlier job's state


@dataclass
class Placement:
    """Where this call's job lives: an earlier job (``job_id`` set) or a freshly claimed attempt."""

    folder: str
    attempt: Attempt
    decision: Decision
    # sbatch --test-only's answer when this process submitted: (cluster time, expected start, nodes, partition)
    estimate: tuple[str, str, str, str] | None = None

    @property
    def run_dir(self) -> str:
        return f"{self.folder}/{self.attempt.n}"


class StepCallLedger:
    def __init__(self, transport: Transport, folder: str, *, sbatch_timeout: float,
                 warn: Callable[[str], None] = log.warning, sleep: Callable[[float], None] = time.sleep):
        self.transport = transport
        self._warn = warn
        self.folder = folder
        self.sbatch_timeout = sbatch_timeout
        self._sleep = sleep

    # -- deciding
    def place(self, *, run_id: str, fingerprint: str, job_name: str, present_file: str = "messages.jsonl") -> Placement:
        """Reattach, adopt, or claim attempt n (its folder created) for the job ``run_id`` wants to run.
        ``present_file``: the run-folder file whose presence lets a job that completed unobserved be adopted."""
        for _ in range(MAX_ROUNDS):
            exists, attempts, claimed = self._read()
            latest = None
            if claimed:
                n = claimed[-1]
                latest = attempts.get(n)
                if latest is None or latest.job_id is None:
                    latest = self._settle_orphan(n, attempts.get(n) or Attempt(n))
            state = None
            if latest is not None and latest.job_id and latest.allocation and not is_step(latest.job_id):
                self._resolve_step(latest)
            if latest is not None and latest.job_id and latest.reported is None:
                state = self.job_state(latest.job_id)
            present = state == "COMPLETED" and latest is not None and \
                self.transport.stat_size(f"{self.folder}/{latest.n}/{present_file}") is not None
            decision = decide(latest, state, fingerprint, present)
            if decision.action != "submit":
                assert latest is not None
                return Placement(self.folder, latest, decision)
            n = claimed[-1] + 1 if claimed else 0
            if self._claim(n, folder_exists=exists):
                # a fresh name per attempt: a job of an earlier, consumed use of this folder never matches
                name = f"{job_name}-{secrets.token_hex(3)}"
                return Placement(self.folder, Attempt(n, None, run_id, fingerprint, name,
                                                      sbatch_timeout=self.sbatch_timeout), decision)
        raise DagsterSlurmError(f"Could not claim an attempt in {self.folder}: other processes kept claiming "
                                "first. Is the same step running in several orchestrators at once?")

    def attempts(self) -> dict[int, Attempt]:
        """The ledger's attempts as recorded (nothing settled or decided)."""
        return self._read()[1]

    def _read(self) -> tuple[bool, dict[int, Attempt], list[int]]:
        """(does the step-call folder exist, its ledger, its claimed attempt numbers)."""
        names = self.transport.listdir(self.folder)
        if names is None:
            return False, {}, []
        data = self.transport.read_from(f"{self.folder}/{LEDGER}", 0, 1 << 24) if LEDGER in names else None
        return True, parse_ledger((data or b"").decode(errors="replace")), claims(names)

    def _claim(self, n: int, folder_exists: bool) -> bool:
        """Create attempt n's run folder: atomic, so exactly one process claims each attempt. Its parents
        are made first when missing; made again once if another step's cleanup removed the (then empty)
        run folder in between."""
        path = f"{self.folder}/{n}"
        for make_parents in (not folder_exists, True):
            if make_parents:
                for parent in (self.folder.rsplit("/", 1)[0], self.folder):
                    try:
                        self.transport.mkdir(parent, mode=0o700)
                    except RemoteFileError:
                        pass  # it exists; any other cause shows in the mkdir below
            try:
                self.transport.mkdir(path, mode=0o700)  # run folders are private to the user
                return True
            except RemoteFileError as exc:
                if self.transport.stat_size(path) is not None:
                    return False  # another process claimed attempt n first
                problem = exc
        raise ConfigurationError(
            f"Cannot create the run folder {path} on the cluster: {problem}. Set SlurmResource.remote_base "
            "(SLURM_DEPLOYMENT_BASE_PATH) to a folder you can write, with free space and inodes."
        )

    def _settle_orphan(self, n: int, known: Attempt) -> Attempt | None:
        """Attempt n was claimed but has no job in the ledger: its claimer is gone or mid-way. Close it
        (no further sbatch try may start) and find out whether a try submitted a job."""
        run_dir = f"{self.folder}/{n}"
        self.transport.mkdir_p(f"{run_dir}/{CLOSED}")
        # the job script carries the attempt's record; without a job script no sbatch try ever started
        record = attempt_from_script((self.transport.read_from(f"{run_dir}/job.sh") or b"").decode(errors="replace"))
        attempt = Attempt(n, None, str(record.get("run_id", "")), str(record.get("fingerprint", "")),
                          str(record.get("job_name", "")), sbatch_timeout=float(record.get("sbatch_timeout") or 0),
                          allocation=str(record.get("allocation") or ""))
        if attempt.job_name and attempt.allocation:
            job_id = self._find_step(attempt)
        else:
            job_id = self._find_job(attempt) if attempt.job_name else None
        if job_id is None:
            self._warn(f"Attempt {n} of this step ({run_dir}) was left unfinished by an earlier orchestrator "
                       "and submitted no job; it is closed.")
            return None
        attempt.job_id = job_id
        self._append(attempt.record())  # repair the ledger
        self._warn(f"Slurm job {job_id} of {run_dir} was missing from the ledger; recorded it.")
        return attempt

    def _find_job(self, attempt: Attempt) -> str | None:
        """The job that attempt's sbatch tries submitted, or None once that is certain: every try
        started before the attempt was closed ran under ``timeout``, so after the newest try's
        start + timeout + margin (both by the cluster's clock), a job in neither squeue nor sacct does
        not exist. While squeue or sacct cannot answer, nothing is concluded; after a bound, this raises."""
        run_dir = f"{self.folder}/{attempt.n}"
        bound = max(self.sbatch_timeout, attempt.sbatch_timeout) + LOOKUP_MARGIN
        deadline = time.monotonic() + 2 * bound + 60
        problem = ""
        while time.monotonic() < deadline:
            out = self.transport.run(lookup_command(attempt.job_name, run_dir), check=False, retry=True)
            try:
                found = parse_lookup(out.stdout, run_dir)
            except SlurmUnavailable as exc:
                problem = str(exc)
                self._sleep(2.0)
                continue
            if len(found.job_ids) > 1:
                raise DagsterSlurmError(f"Several Slurm jobs ({', '.join(found.job_ids)}) claim {run_dir}; "
                                        "cancel the ones you do not want. Nothing more was submitted.")
            if found.job_ids:
                return found.job_ids[0]
            if found.newest_try_at is None or found.now > found.newest_try_at + bound:
                return None
            self._sleep(2.0)
        raise DagsterSlurmError(
            f"Could not find out whether Slurm accepted job {attempt.job_name} for {run_dir} "
            f"({problem or 'no conclusive answer'}). Nothing was resubmitted; check `squeue -n {attempt.job_name}` "
            "and re-execute the step when the cluster answers: it reattaches to the job if there is one."
        )

    def _resolve_step(self, attempt: Attempt) -> None:
        """An attempt recorded with its allocation's job id only (its orchestrator went before the step
        started, or before it wrote the step's id): the step's id, if the step has started since."""
        step = (self.transport.read_from(f"{self.folder}/{attempt.n}/step_id") or b"").decode(errors="replace").strip()
        if is_step(step) and step.startswith(f"{attempt.job_id}."):
            attempt.job_id = step
            self._append(attempt.record())

    def _find_step(self, attempt: Attempt) -> str | None:
        """The step (or the allocation it was requested in) of an attempt of a shared allocation, or None once
        it is certain that none was requested: its drop script runs under a cluster-side timeout, so after the
        guard's time + that bound + a margin, a request that is in neither the inbox nor taken was never made."""
        run_dir = f"{self.folder}/{attempt.n}"
        q = shlex.quote
        for _ in range(60):
            probe = parse_step_probe(self.transport.run(step_probe_command(run_dir, attempt.allocation,
                                                                           attempt.job_name), check=False,
                                                        retry=True).stdout)
            if probe.step_id:
                return probe.step_id
            if probe.waiting or probe.taken:
                job = (self.transport.read_from(f"{attempt.allocation}/job_id") or b"").decode().strip()
                if job:
                    return job
            clock = self.transport.run(f"cat {q(run_dir)}/drop/at 2>/dev/null || echo -; date +%s", check=False,
                                       retry=True).stdout.split()
            if not clock or clock[0] == "-" or (len(clock) > 1 and clock[0].isdigit() and clock[1].isdigit()
                                                and int(clock[1]) > int(clock[0]) + DROP_TIMEOUT + LOOKUP_MARGIN):
                return None
            self._sleep(2.0)
        raise DagsterSlurmError(f"Could not find out whether this step was requested in allocation "
                                f"{attempt.allocation} ({run_dir}). Nothing was started; re-execute the step.")

    def job_state(self, job_id: str) -> str | None:
        """squeue/sacct state of ``job_id``; None when the cluster provably no longer knows it."""
        problem = ""
        for attempt in range(STATE_TRIES):
            out = self.transport.run(state_command(job_id), check=False, retry=True)
            try:
                return parse_state(out.stdout, job_id)
            except SlurmUnavailable as exc:
                problem = str(exc)
                self._sleep(2.0 * (attempt + 1))
        raise DagsterSlurmError(
            f"Cannot tell whether Slurm job {job_id} of this step is still queued or running: {problem}. "
            "Nothing was submitted; re-execute the step when the Slurm controller answers."
        )

    def _append(self, record: dict[str, object]) -> None:
        self.transport.run(append_command(self.folder, record), retry=True)

    # -- submitting
    def submit(self, placement: Placement, lease_dir: str | None, describe_request: str) -> str:
        """sbatch the claimed attempt; exactly one job whatever happens to sbatch's answer."""
        attempt = placement.attempt
        for try_number in range(SBATCH_TRIES):
            command = submit_command(self.folder, attempt, try_number, sbatch_timeout=self.sbatch_timeout,
                                     lease_dir=lease_dir)
            try:
                result = self.transport.run(command, timeout=self.sbatch_timeout + 10, check=False)
            except SSHConnectionError:
                what = "the connection dropped during sbatch"
            else:
                job_id = parse_submit(result.stdout)
                placement.estimate = placement.estimate or parse_estimate(result.stdout)
                unread = unread_estimate(result.stdout)
                if unread:
                    self._warn(f"Could not read sbatch --test-only's start estimate (please report it to "
                              f"dagster-slurm with your Slurm version): {unread[:300]}")
                if job_id is not None:
                    if result.exit_status != 0:  # submitted, but the ledger line or lease was not written
                        self._append({**attempt.record(), "job_id": job_id})
                    return job_id
                status, stderr = result.exit_status, tail(result.stderr)
                if status == GUARD_TAKEN:
                    raise DagsterSlurmError(
                        f"Another orchestrator took over {placement.run_dir} (it found this step's attempt "
                        "unfinished). Nothing was submitted by this process; re-execute the step."
                    )
                if status in (126, 127):
                    raise ConfigurationError(
                        f"sbatch or timeout could not be run on the cluster ({stderr or f'status {status}'}). "
                        "The login shell's PATH must hold Slurm's sbatch and coreutils' timeout."
                    )
                if status not in (-1, 124, 137) and "timed out" not in stderr.lower():
                    if not is_transient_sbatch_error(stderr):
                        raise ConfigurationError(f"sbatch rejected the job: {stderr or 'no message'}\n{describe_request}"
                                                 + submit_limit_hint(stderr))
                    if try_number + 1 == SBATCH_TRIES:
                        raise SlurmJobError(
                            f"sbatch kept failing after {SBATCH_TRIES} attempts: {stderr}. The Slurm "
                            "controller is busy or unreachable; retry the run later.", "", "NOT_SUBMITTED", "",
                            stderr)
                    delay = 2.0 ** try_number
                    self._warn(f"sbatch failed transiently ({stderr}); retrying in {delay:.0f} s.")
                    self._sleep(delay)
                    continue
                what = f"sbatch's answer was lost ({stderr or 'no answer in time'})"
            self._warn(f"{what}; looking the job up before anything is submitted again.")
            job_id = self._find_job(attempt)
            if job_id is not None:
                self._append({**attempt.record(), "job_id": job_id})
                self._warn(f"Found Slurm job {job_id}: sbatch had submitted it; using it, nothing resubmitted.")
                return job_id
            self._warn(f"sbatch try {try_number} of {placement.run_dir} provably submitted nothing; trying again.")
        raise SlurmJobError(f"sbatch gave no usable answer in {SBATCH_TRIES} tries; nothing is running for "
                            f"{placement.run_dir}.", "", "NOT_SUBMITTED", "", "")

    # -- after the job
    def report(self, placement: Placement, state: str, *, success: bool, keep: bool,
               done: list[int] | None = None) -> None:
        """The job ended and this orchestrator consumed it. Success: the step-call folder goes (unless
        kept). Otherwise the ledger says so (a re-execution submits anew) and the logs stay."""
        q = shlex.quote
        if success and not keep:
            parent = self.folder.rsplit("/", 1)[0]
            # after the step's result, not before it: nothing waits for this removal
            self.transport.run_later(f"rm -rf -- {q(self.folder)} ; rmdir {q(parent)} 2>/dev/null ; true")
            return
        record: dict[str, object] = {"n": placement.attempt.n, "reported": state}
        if done is not None:  # an array attempt: the tasks that succeeded are not run again
            record["done"] = sorted(done)
        command = append_command(self.folder, record)
        self.transport.run(command, check=False, retry=True)
