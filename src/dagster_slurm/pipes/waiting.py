"""Wait for one job: say what the queue says, end waits that cannot end well, cancel on terminate."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import dagster as dg

from dagster_slurm.errors import ConfigurationError, SlurmJobError
from dagster_slurm.slurm.allocation import is_step
from dagster_slurm.slurm.parse import JobAccounting, unresolvable_reason
from dagster_slurm.slurm.watcher import JobWatcher
from dagster_slurm.transport.base import Transport

STILL_PENDING_EVERY = 300.0  # seconds between "still pending" lines while a job waits in the queue


class TerminateGuard:
    """While a job of this step may exist (from the moment it may be submitted until it ended), a terminate
    (Dagster's SIGINT, a forwarded one, SIGTERM of the step process) is noted instead of raised wherever the
    main thread happens to be: an exception in the middle of sbatch, of the ledger's bookkeeping or of a log
    call would leave the job running. :func:`wait_for_job` acts on it at once: it cancels the job, waits until
    squeue no longer shows it and raises Dagster's interruption. Outside the main thread (where no handler can
    be set) interrupts arrive as before and the wait's own ``except`` cancels."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> TerminateGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        """Before anything was submitted: a terminate simply ends the step."""
        if self.requested:
            raise dg.DagsterExecutionInterruptedError()


class JobLeftQueued(SlurmJobError):
    """job_timeout expired; the job was left queued or running (a re-execution reattaches to it)."""


def wait_for_job(log: dg.DagsterLogManager, watcher: JobWatcher, transport: Transport, job_id: str, *,
                 job_timeout: float | None, queue_timeout: float | None,
                 cancel_also: str = "", exit_file: str | None = None,
                 on_exit: Callable[[], None] | None = None,
                 on_tick: Callable[[], None] | None = None,
                 terminate: TerminateGuard | None = None,
                 clock: Callable[[], float] = time.monotonic) -> JobAccounting:
    """Block until ``job_id`` ends and return its accounting.

    Pending reasons reach the log at INFO when they change, then every few minutes. A job pending for
    a reason that cannot resolve (e.g. PartitionConfig), or longer than ``queue_timeout``, is cancelled
    and the wait fails naming the setting; after ``job_timeout`` the job is left alone. Whenever this
    cancels the job (also on terminate), the shell command ``cancel_also`` runs in the same remote
    command as ``scancel`` (e.g. removing the job's secrets). ``exit_file``: the file the job script
    writes last, watched on the cluster; ``on_exit`` is called as soon as it appears. ``on_tick`` is
    called about twice a second while the job is queued or running (e.g. to collect finished array tasks).
    ``terminate``: the step's guard; a terminate it noted (also one before this call) cancels the job."""
    handle = watcher.watch(job_id, exit_file=exit_file)
    if on_exit is not None:
        handle.when_exited(on_exit)
    started = clock()
    seen: tuple[str, str, bool] = ("", "", False)
    told_at = started
    try:
        while terminate is None or not terminate.requested:
            if handle.wait(0.5):
                break
            if terminate is not None and terminate.requested:
                break
            if on_tick is not None:
                on_tick()
            now = clock()
            state, reason = handle.state, handle.reason
            expected = f", expected to start at {handle.start}" if state == "PENDING" and handle.start else ""
            if (state, reason, bool(expected)) != seen:  # also once when Slurm first gives an estimate
                seen, told_at = (state, reason, bool(expected)), now
                log.info(f"Slurm job {job_id}: {state}" + (f" ({reason})" if reason else "") + expected)
            elif state == "PENDING" and now - told_at >= STILL_PENDING_EVERY:
                told_at = now
                log.info(f"Slurm job {job_id} still pending ({reason or 'no reason given'}), "
                         f"queued {(now - started) / 60:.0f} min{expected}")
            if state == "PENDING":
                why = unresolvable_reason(reason)
                if why is not None:
                    _cancel(transport, job_id, cancel_also)
                    raise ConfigurationError(
                        f"Slurm job {job_id} can never start: pending reason {reason}: {why}. It was cancelled. "
                        "Change SlurmQueueConfig or the asset's resource_requirements / slurm_resources "
                        "(see `scontrol show partition` for the limits)."
                    )
                if queue_timeout is not None and now - started > queue_timeout:
                    _cancel(transport, job_id, cancel_also)
                    raise SlurmJobError(
                        f"Slurm job {job_id} was still pending ({reason or 'no reason given'}) after "
                        f"SlurmResource.queue_timeout={queue_timeout:g} s; it was cancelled.",
                        job_id, "PENDING", "", "")
            if job_timeout is not None and now - started > job_timeout:
                raise JobLeftQueued(
                    f"Slurm job {job_id} did not finish within SlurmResource.job_timeout={job_timeout:g} s "
                    f"(last state {state}). It was left running; a re-execution of the step reattaches to "
                    f"it, or cancel it with `scancel {job_id}`.", job_id, state, "", "")
        if terminate is not None and terminate.requested:
            raise dg.DagsterExecutionInterruptedError()
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        _cancel(transport, job_id, cancel_also)
        log.warning(f"Run terminated: Slurm job {job_id} was cancelled (scancel).")
        raise
    finally:
        watcher.forget(job_id)
    if handle.error is not None:
        raise handle.error
    assert handle.final is not None
    return handle.final


# After scancel, how long the cancel waits for squeue to drop the job (its processes killed, KillWait).
GONE_WITHIN = 45


def cancel_command(job_id: str, also: str = "") -> str:
    """scancel, ``also``, then wait (bounded) until squeue no longer shows the job: once a terminate returns,
    nothing of the job runs any more."""
    listed = f"squeue -h -s {job_id} -o %i" if is_step(job_id) else f"squeue -h -j {job_id} -o %T"
    return (f"scancel {job_id}" + (f"; {also}" if also else "")
            + f"; i=0; while [ $i -lt {GONE_WITHIN * 4} ] && {listed} 2>/dev/null | grep -q .; "
            "do sleep 0.25; i=$((i+1)); done")


def _cancel(transport: Transport, job_id: str, also: str, bound: float = GONE_WITHIN + 30.0) -> None:
    """:func:`cancel_command` in one remote command, run on a thread of its own: termination signals that
    still reach this process's main thread (outside a :class:`TerminateGuard`) can interrupt the waiting
    here, never the cancel itself."""
    command = cancel_command(job_id, also)
    done = threading.Event()

    def work() -> None:
        try:
            transport.run(command, check=False, timeout=GONE_WITHIN + 15, retry=True)
        except Exception:  # noqa: BLE001 - the wait's own error says what happened to the job
            pass
        finally:
            done.set()

    threading.Thread(target=work, name="dagster-slurm-cancel").start()
    deadline = time.monotonic() + bound
    while not done.is_set() and time.monotonic() < deadline:
        try:
            done.wait(0.2)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            continue
