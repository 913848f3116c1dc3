"""Exactly one Slurm job per step attempt: find an earlier job of this step call, or claim and submit one.

The remote ledger (``slurm/ledger.py`` has its layout) says which jobs this step call already has.
``place`` decides, before anything is staged, whether to reattach to a queued or running job, adopt
one that completed unobserved, or claim a new attempt folder; ``submit`` runs sbatch for a claimed
attempt and, when sbatch's answer is lost, looks the job up instead of submitting again.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagster_slurm.errors import (
    ConfigurationError,
    DagsterSlurmError,
    RemoteCommandError,
    RemoteFileError,
    SlurmJobError,
    SSHConnectionError,
)
from dagster_slurm.slurm.ledger import (
    CLOSED,
    GUARD_TAKEN,
    LEDGER,
    Attempt,
    Decision,
    claims,
    decide,
    ledger_line,
    lookup_command,
    parse_ledger,
    parse_lookup,
    parse_state,
    reported_command,
    state_command,
    submit_command,
)
from dagster_slurm.slurm.parse import is_transient_sbatch_error, parse_sbatch_job_id
from dagster_slurm.slurm.script import attempt_from_script
from dagster_slurm.transport.base import Transport

log = logging.getLogger("dagster_slurm.pipes")

SBATCH_TRIES = 5  # transient sbatch failures (busy controller) are retried after 1, 2, 4, 8 s
LOOKUP_MARGIN = 15.0  # seconds after a try's cluster-side sbatch timeout before "not found" is proof
MAX_ROUNDS = 10  # claims lost to concurrent processes before giving up


@dataclass
class Placement:
    """Where this call's job lives: an earlier job (``job_id`` set) or a freshly claimed attempt."""

    folder: str
    attempt: Attempt
    decision: Decision

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
    def place(self, template: Attempt) -> Placement:
        """Reattach, adopt, or claim attempt n (its folder created) for ``template``'s job."""
        for _ in range(MAX_ROUNDS):
            attempts, claimed = self._read()
            latest = None
            if claimed:
                n = claimed[-1]
                latest = attempts.get(n)
                if latest is None or latest.job_id is None:
                    latest = self._settle_orphan(n, attempts.get(n) or Attempt(n))
            state = None
            if latest is not None and latest.job_id and latest.reported is None:
                state = parse_state(self.transport.run(state_command(latest.job_id), check=False,
                                                       retry=True).stdout, latest.job_id)
            present = state == "COMPLETED" and latest is not None and \
                self.transport.stat_size(f"{self.folder}/{latest.n}/messages.jsonl") is not None
            decision = decide(latest, state, template.fingerprint, present)
            if decision.action != "submit":
                assert latest is not None
                return Placement(self.folder, latest, decision)
            n = claimed[-1] + 1 if claimed else 0
            if self._claim(n, folder_exists=bool(claimed) or bool(attempts)):
                return Placement(self.folder, Attempt(n, None, template.run_id, template.fingerprint,
                                                      template.job_name, sbatch_timeout=self.sbatch_timeout),
                                 decision)
        raise DagsterSlurmError(f"Could not claim an attempt in {self.folder}: other processes kept claiming "
                                "first. Is the same step running in several orchestrators at once?")

    def _read(self) -> tuple[dict[int, Attempt], list[int]]:
        names = self.transport.listdir(self.folder)
        if names is None:
            return {}, []
        data = self.transport.read_from(f"{self.folder}/{LEDGER}", 0, 1 << 24) if LEDGER in names else None
        return parse_ledger((data or b"").decode(errors="replace")), claims(names)

    def _claim(self, n: int, folder_exists: bool) -> bool:
        """Create attempt n's run folder: atomic, so exactly one process claims each attempt."""
        path = f"{self.folder}/{n}"
        if not folder_exists:
            for parent in (self.folder.rsplit("/", 1)[0], self.folder):
                try:
                    self.transport.mkdir(parent)
                except RemoteFileError:
                    pass  # it exists; any other cause shows in the mkdir below
        try:
            self.transport.mkdir(path)
            return True
        except RemoteFileError as exc:
            if self.transport.stat_size(path) is not None:
                return False  # another process claimed attempt n first
            raise ConfigurationError(
                f"Cannot create the run folder {path} on the cluster: {exc}. Set SlurmResource.remote_base "
                "(SLURM_DEPLOYMENT_BASE_PATH) to a folder you can write, with free space and inodes."
            ) from None

    def _settle_orphan(self, n: int, known: Attempt) -> Attempt | None:
        """Attempt n was claimed but has no job in the ledger: its claimer is gone or mid-way. Close it
        (no further sbatch try may start) and find out whether a try submitted a job."""
        run_dir = f"{self.folder}/{n}"
        self.transport.mkdir_p(f"{run_dir}/{CLOSED}")
        # the job script carries the attempt's record; without a job script no sbatch try ever started
        record = attempt_from_script((self.transport.read_from(f"{run_dir}/job.sh") or b"").decode(errors="replace"))
        attempt = Attempt(n, None, str(record.get("run_id", "")), str(record.get("fingerprint", "")),
                          str(record.get("job_name", "")), sbatch_timeout=float(record.get("sbatch_timeout") or 0))
        job_id = self._find_job(attempt) if attempt.job_name else None
        if job_id is None:
            self._warn(f"Attempt {n} of this step ({run_dir}) was left unfinished by an earlier orchestrator "
                       "and submitted no job; it is closed.")
            return None
        attempt.job_id = job_id
        self._append(ledger_line(attempt.record()))  # repair the ledger
        self._warn(f"Slurm job {job_id} of {run_dir} was missing from the ledger; recorded it.")
        return attempt

    def _find_job(self, attempt: Attempt) -> str | None:
        """The job that attempt's sbatch tries submitted, or None once that is certain: every try
        started before the attempt was closed ran under ``timeout``, so after the newest try's
        start + timeout + margin (the cluster's clock), a job in neither squeue nor sacct does not exist."""
        run_dir = f"{self.folder}/{attempt.n}"
        while True:
            out = self.transport.run(lookup_command(attempt.job_name, run_dir), check=False, retry=True)
            found = parse_lookup(out.stdout, run_dir)
            if found.job_ids:
                return found.job_ids[0]
            if not found.now:
                raise DagsterSlurmError(f"Could not look up job {attempt.job_name} on the cluster: {out.stderr}")
            bound = max(self.sbatch_timeout, attempt.sbatch_timeout) + LOOKUP_MARGIN
            if found.newest_try_at is None or found.now > found.newest_try_at + bound:
                return None
            self._sleep(2.0)

    def _append(self, line: str) -> None:
        self.transport.run(f"printf '%s' {shlex.quote(line)} >> {shlex.quote(self.folder + '/' + LEDGER)}",
                           retry=True)

    # -- submitting
    def submit(self, placement: Placement, lease_dir: str | None, describe_request: str) -> str:
        """sbatch the claimed attempt; exactly one job whatever happens to sbatch's answer."""
        attempt = placement.attempt
        for try_number in range(SBATCH_TRIES):
            command = submit_command(self.folder, attempt, try_number, sbatch_timeout=self.sbatch_timeout,
                                     lease_dir=lease_dir)
            try:
                result = self.transport.run(command, timeout=self.sbatch_timeout + 10)
                return parse_sbatch_job_id(result.stdout)
            except RemoteCommandError as exc:
                if exc.exit_status == GUARD_TAKEN:
                    raise DagsterSlurmError(
                        f"Another orchestrator took over {placement.run_dir} (it found this step's attempt "
                        "unfinished). Nothing was submitted by this process; re-execute the step."
                    ) from None
                if exc.exit_status is not None and exc.exit_status < 124 and \
                        is_transient_sbatch_error(exc.stderr_tail):
                    if try_number + 1 == SBATCH_TRIES:
                        raise SlurmJobError(
                            f"sbatch kept failing after {SBATCH_TRIES} attempts: {exc.stderr_tail}. The Slurm "
                            "controller is busy or unreachable; retry the run later.", "", "NOT_SUBMITTED", "",
                            exc.stderr_tail) from None
                    delay = 2.0 ** try_number
                    self._warn(f"sbatch failed transiently ({exc.stderr_tail}); retrying in {delay:.0f} s.")
                    self._sleep(delay)
                    continue
                if exc.exit_status is not None and exc.exit_status < 124 and "timed out" not in exc.stderr_tail:
                    raise ConfigurationError(
                        f"sbatch rejected the job: {exc.stderr_tail or 'no message'}\n{describe_request}"
                    ) from None
                what = f"sbatch's answer was lost ({exc.stderr_tail or 'timed out'})"
            except SSHConnectionError:
                what = "the connection dropped during sbatch"
            self._warn(f"{what}; looking the job up before anything is submitted again.")
            job_id = self._find_job(attempt)
            if job_id is not None:
                self._append(ledger_line({**attempt.record(), "job_id": job_id}))
                self._warn(f"Found Slurm job {job_id}: sbatch had submitted it; using it, nothing resubmitted.")
                return job_id
            self._warn(f"sbatch try {try_number} of {placement.run_dir} provably submitted nothing; trying again.")
        raise SlurmJobError(f"sbatch gave no usable answer in {SBATCH_TRIES} tries; nothing is running for "
                            f"{placement.run_dir}.", "", "NOT_SUBMITTED", "", "")

    # -- after the job
    def report(self, placement: Placement, state: str, *, success: bool, keep: bool) -> None:
        """The job ended and this orchestrator consumed it. Success: the step-call folder goes (unless
        kept). Otherwise the ledger says so (a re-execution submits anew), the secrets file goes and the
        logs stay."""
        q = shlex.quote
        if success and not keep:
            parent = self.folder.rsplit("/", 1)[0]
            command = f"rm -rf -- {q(self.folder)} ; rmdir {q(parent)} 2>/dev/null ; true"
        else:
            command = f"{reported_command(self.folder, placement.attempt.n, state)}; " \
                      f"rm -f -- {q(placement.run_dir + '/env.sh')}"
        self.transport.run(command, check=False, retry=True)
