"""One watcher per transport polls all its jobs in one squeue call per tick. With the connection agent
that is one watcher per machine and cluster (the agent's); with a direct connection one per process.

Polling backs off from ``min_interval`` to ``max_interval`` while nothing changes and snaps back on
any change or ``poke()`` (e.g. the payload's exit file appeared). Jobs that leave the queue or reach
a terminal state are finalised with one sacct call for all of them, which also yields their metrics.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.slurm.allocation import allocation_of, is_step
from dagster_slurm.slurm.array import aggregate, belongs_to, overall_state
from dagster_slurm.slurm.exits import ExitWatcher
from dagster_slurm.slurm.parse import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    TERMINAL_STATES,
    JobAccounting,
    QueueEntry,
    only_unknown_job_ids,
    parse_sacct,
    parse_squeue,
)
from dagster_slurm.transport.base import Transport

log = logging.getLogger("dagster_slurm.slurm")

# How long a job may be terminal/absent in squeue but missing from sacct (accounting lag) before we
# settle for squeue's word (the result then says its metrics are missing); polls stay <= 1 s meanwhile.
SACCT_LAG_SECONDS = 10.0
# How long polls may fail in a row (controller or connection down) before the waits fail.
POLL_FAILURE_BOUND = 300.0

# Slurm >= 24.05: ``squeue --only-job-state`` asks slurmctld for ids and states only, a lighter RPC that
# SchedulerParameters=enable_job_state_cache answers from a cache, without the job lock (Nextflow polls
# with it for that reason). Where ``squeue --help`` lists it, each tick asks it. Recorded on 24.11 and 26.05
# (tests/data/slurm/releases): the same lines for ``-o '%i|%T'`` (array tasks 123_4 and 123_[5-9] alike),
# %r prints "None" and %S "N/A", and an unknown id gives exit 0 and no line where the full query exits 1
# with "Invalid job id specified": both mean "not queued", read alike. A pending job's reason (one no job
# outlives fails the wait at once) and start estimate still come from the full query, asked for the
# pending jobs only: while their reason is not yet known, then after 1 s, doubling while nothing changes,
# up to every PENDING_DETAIL_SECONDS (a new job reads "Priority" until the scheduler has looked at it, and
# "Resources" a second later: the change is reported as the full query each tick would).
STATES_ONLY = "--only-job-state"
PENDING_DETAIL_SECONDS = 30.0


@dataclass
class JobHandle:
    job_id: str
    state: str = "PENDING"
    reason: str = ""
    start: str = ""  # while pending: when Slurm expects it to start (cluster time), if it says
    final: JobAccounting | None = None
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None  # the payload's, from the exit file, as soon as it appears
    exited: threading.Event = field(default_factory=threading.Event)
    _on_exit: list = field(default_factory=list)
    _lagging_since: float | None = None
    _detailed_at: float | None = None  # when the full squeue query last gave its reason and start
    _detail_every: float = 1.0  # how long after that it is asked again (doubles while nothing changes)

    def wants_detail(self, now: float) -> bool:
        """Whether the states-only poll should ask the full query for this pending job's reason and start."""
        return not self.reason or self._detailed_at is None or now - self._detailed_at >= self._detail_every

    def detailed(self, reason: str, start: str, now: float) -> None:
        """The full query answered: ask again after 1 s if its answer changed, else after twice as long."""
        same = self._detailed_at is not None and (reason, start) == (self.reason, self.start)
        self._detailed_at = now
        self._detail_every = min(2 * self._detail_every, PENDING_DETAIL_SECONDS) if same else 1.0

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)

    def when_exited(self, callback) -> None:
        """Call ``callback()`` once the job's exit file has appeared (at once if it has)."""
        self._on_exit.append(callback)
        if self.exited.is_set():
            callback()

    def mark_exited(self, code: int | None) -> None:
        if self.exited.is_set():
            return
        self.exit_code = code
        self.exited.set()
        for callback in list(self._on_exit):
            callback()


class PollFailures:
    """Polls failing in a row. After ``POLL_FAILURE_BOUND`` seconds of them the waits fail: one rule
    for both watchers (this process's own and the one that asks the connection agent)."""

    def __init__(self) -> None:
        self.count = 0
        self._since = 0.0

    def ok(self) -> None:
        self.count = 0

    def failed(self) -> bool:
        """Count one failure; whether the bound has passed."""
        self.count += 1
        if self.count == 1:
            self._since = time.monotonic()
        return time.monotonic() - self._since > POLL_FAILURE_BOUND


class HandleSet:
    """The handles one watcher serves, and its polling thread, which runs while any is not done."""

    thread_name = "dagster-slurm-watcher"

    def __init__(self) -> None:
        self._jobs: dict[str, JobHandle] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _handle(self, job_id: str) -> tuple[JobHandle, bool]:
        """(the handle of ``job_id``, whether the polling thread was started for it). Call with the lock."""
        handle = self._jobs.get(job_id)
        if handle is None:
            handle = self._jobs[job_id] = JobHandle(job_id)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()
            return handle, True
        return handle, False

    def _active(self) -> list[JobHandle]:
        with self._lock:
            return [h for h in self._jobs.values() if not h.done.is_set()]

    def _next_active(self) -> list[JobHandle] | None:
        """The handles still waiting, or None when there are none: the polling thread then ends."""
        while True:
            active = self._active()
            if active:
                return active
            with self._lock:
                if not [h for h in self._jobs.values() if not h.done.is_set()]:
                    self._thread = None
                    return None

    def _loop(self) -> None:
        raise NotImplementedError


class JobWatcher(HandleSet):
    def __init__(self, transport: Transport, min_interval: float = 0.1, max_interval: float = 10.0):
        super().__init__()
        self._transport = transport
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._wake = threading.Event()
        self.ticks = 0
        self.listeners: list = []  # called (from the watcher's thread) after any change
        self._exits: ExitWatcher | None = None
        self._lagging = False
        self._states_only: bool | None = None  # whether squeue has --only-job-state (probed once)

    def watch(self, job_id: str, exit_file: str | None = None) -> JobHandle:
        """Watch ``job_id``; with ``exit_file`` (the file its job script writes last) its end is
        noticed within ~50 ms of that file appearing (see ``exits.py``)."""
        if exit_file:
            with self._lock:
                if self._exits is None:
                    self._exits = ExitWatcher(self._transport, self._exited)
            self._exits.add(job_id, exit_file)
        with self._lock:
            handle, started = self._handle(job_id)
        if not started:  # (a new thread's first tick polls at once)
            self.poke()
        return handle

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            exits = self._exits
        if exits is not None:
            exits.remove(job_id)

    def _exited(self, job_id: str, code: int | None) -> None:
        """The job's exit file appeared: poll Slurm now and tell whoever waits."""
        with self._lock:
            handle = self._jobs.get(job_id)
        if handle is not None:
            handle.mark_exited(code)
        self.poke()
        for listener in list(self.listeners):
            listener()

    def poke(self) -> None:
        """Poll now and return to the fastest cadence."""
        self._wake.set()

    def _loop(self) -> None:
        interval = self.min_interval
        failures = PollFailures()
        while True:
            active = self._next_active()
            if active is None:
                return
            try:
                changed = self.tick(active)
                failures.ok()
            except Exception as exc:  # noqa: BLE001 - a failing poll is retried, then reported
                changed = False
                over = failures.failed()
                log.warning("job status poll failed (%d in a row): %s", failures.count, exc)
                if over:
                    for h in active:
                        h.error = exc
                        h.done.set()
                    changed = True
            if changed:
                for listener in list(self.listeners):
                    listener()
            # with the exit files watched on the cluster, an end wakes us anyway: back off faster
            grow = 3.0 if self._exits is not None and self._exits.streaming else 1.5
            interval = self.min_interval if changed else min(interval * grow, self.max_interval)
            if self._lagging:  # a job waits for its accounting record: its result is bounded, not backed off
                interval, self._lagging = min(interval, 1.0), False
            if self._wake.wait(interval):
                self._wake.clear()
                interval = self.min_interval

    def tick(self, active: list[JobHandle]) -> bool:
        """One poll of all active jobs. Returns whether anything changed.

        A step of a shared allocation (``123.4``) is watched once it has started: it runs while its
        allocation runs and ``squeue --steps`` lists it, and ends when its exit file appears, when squeue
        no longer lists it, or with its allocation; its own sacct line is its result."""
        self.ticks += 1
        queue, detailed = self._queue(active)
        steps = [h for h in active if is_step(h.job_id)]
        running_steps = self._running_steps(steps) if steps else set()
        changed = False
        finishing: list[JobHandle] = []
        now = time.monotonic()
        for h in active:
            entry = _entry(queue, allocation_of(h.job_id))
            if entry is not None and is_step(h.job_id):
                entry = QueueEntry(h.job_id, "RUNNING", "") if entry.state == "RUNNING" else entry
                if h.exited.is_set() or h.job_id not in running_steps:
                    entry = None
            if entry is not None:
                if h.job_id in detailed:
                    reason, start = entry.reason, entry.start
                    h.detailed(reason, start, now)
                else:  # the states-only query: the reason and start seen last stand
                    reason, start = (h.reason, h.start) if entry.state == "PENDING" else ("", "")
                if (entry.state, reason, start) != (h.state, h.reason, h.start):
                    h.state, h.reason, h.start, changed = entry.state, reason, start, True
            if entry is None or entry.state in TERMINAL_STATES:
                finishing.append(h)
        if finishing:
            changed |= self._finalise(finishing)
        return changed

    def _queue(self, active: list[JobHandle]) -> tuple[dict[str, QueueEntry], set[str]]:
        """squeue's lines for the active jobs (a step: its allocation's), and the ids whose reason and start
        they carry."""
        ids = list(dict.fromkeys(allocation_of(h.job_id) for h in active))
        jobs = [h for h in active if not is_step(h.job_id)]
        if self._states_only is None:
            self._states_only = STATES_ONLY in self._transport.probe("squeue --help", check=False)
        if not self._states_only:
            return self._squeue(SQUEUE_FORMAT, ids), {h.job_id for h in jobs}
        queue = self._squeue("%i|%T", ids, STATES_ONLY)
        now = time.monotonic()
        detail = [h.job_id for h in jobs
                  if (e := _entry(queue, h.job_id)) is not None and e.state == "PENDING" and h.wants_detail(now)]
        if detail:
            queue = {i: e for i, e in queue.items() if not any(belongs_to(i, d) for d in detail)}
            queue.update(self._squeue(SQUEUE_FORMAT, detail))
        return queue, set(detail)

    def _running_steps(self, steps: list[JobHandle]) -> set[str]:
        """The step ids ``squeue --steps`` lists for the allocations of ``steps``."""
        ids = ",".join(dict.fromkeys(allocation_of(h.job_id) for h in steps))
        result = self._transport.run(f"squeue -h -s -j {ids} -o '%i'", check=False, retry=True, timeout=30)
        if result.exit_status != 0 and not only_unknown_job_ids(result.stderr.strip().splitlines()):
            raise DagsterSlurmError(f"squeue --steps failed ({result.exit_status}): {result.stderr.strip()}")
        return {line.strip() for line in result.stdout.splitlines() if line.strip()}

    def _squeue(self, fmt: str, ids: list[str], option: str = "") -> dict[str, QueueEntry]:
        result = self._transport.run(
            " ".join(filter(None, ["squeue", option, f"-h -t all -o '{fmt}' -j {','.join(ids)}"])),
            check=False, retry=True, timeout=30,
        )
        if result.exit_status != 0 and not only_unknown_job_ids(result.stderr.strip().splitlines()):
            raise DagsterSlurmError(f"squeue failed ({result.exit_status}): {result.stderr.strip()}")
        return parse_squeue(result.stdout)

    def _finalise(self, handles: list[JobHandle]) -> bool:
        ids = ",".join(h.job_id for h in handles)
        result = self._transport.run(
            f"sacct -P -n -o {SACCT_FIELDS} -j {ids}", check=False, retry=True, timeout=30
        )
        if result.exit_status != 0:
            return self._finalise_without_accounting(handles, result.stderr)
        accounting = parse_sacct(result.stdout, steps={h.job_id for h in handles if is_step(h.job_id)})
        changed = False
        for h in handles:
            acct = accounting.get(h.job_id)
            if acct is None:  # an array job: its tasks' records, as one
                tasks = task_accounting_from(accounting, h.job_id)
                acct = aggregate(h.job_id, tasks) if tasks and all(a.terminal for a in tasks.values()) else None
            if acct is not None and acct.terminal:
                h.final, h.state = acct, acct.state
            else:
                now = time.monotonic()
                h._lagging_since = h._lagging_since or now
                if now - h._lagging_since < SACCT_LAG_SECONDS:
                    self._lagging = True
                    continue
                log.warning("sacct has no final record of job %s after %.0f s; using squeue's state %s, without "
                            "metrics", h.job_id, SACCT_LAG_SECONDS, h.state)
                h.final = JobAccounting(h.job_id, h.state if h.state in TERMINAL_STATES else "UNKNOWN", "",
                                        accounted=False,
                                        unaccounted_why=f"no sacct record within {SACCT_LAG_SECONDS:g} s")
            h.done.set()
            changed = True
        return changed


    def _finalise_without_accounting(self, handles: list[JobHandle], stderr: str) -> bool:
        """sacct failed (accounting down or absent): the job left the queue or squeue calls it ended,
        so finish now with squeue's word rather than wait for metrics that may never come."""
        log.warning("sacct failed (%s); finishing job(s) %s with squeue's state, without metrics",
                    stderr.strip().splitlines()[-1] if stderr.strip() else "no message",
                    ",".join(h.job_id for h in handles))
        for h in handles:
            state = h.state if h.state in TERMINAL_STATES else "UNKNOWN"
            h.final, h.state = JobAccounting(h.job_id, state, "", accounted=False), state
            h.done.set()
        return True


def _entry(queue: dict[str, QueueEntry], job_id: str) -> QueueEntry | None:
    """squeue's entry for ``job_id``; an array job's tasks (123_4, 123_[5-9%2]) as one: the state of the array."""
    if job_id in queue:
        return queue[job_id]
    tasks = [e for listed, e in queue.items() if belongs_to(listed, job_id)]
    if not tasks:
        return None
    state = overall_state([e.state for e in tasks])
    reason = next((e.reason for e in tasks if e.state == state), "")
    return QueueEntry(job_id, state, reason)


def task_accounting_from(accounting: dict[str, JobAccounting], job_id: str) -> dict[str, JobAccounting]:
    return {listed: a for listed, a in accounting.items() if belongs_to(listed, job_id) and listed != job_id}


_watchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_watchers_lock = threading.Lock()


def watcher_for(transport: Transport, min_interval: float = 0.1, max_interval: float = 10.0) -> JobWatcher:
    """The single watcher of a direct ``transport`` (one per process and cluster; the agent has its own)."""
    with _watchers_lock:
        watcher = _watchers.get(transport)
        if watcher is None:
            watcher = _watchers[transport] = JobWatcher(transport, min_interval, max_interval)
        watcher.min_interval, watcher.max_interval = min_interval, max_interval
        return watcher
