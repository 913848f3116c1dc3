"""Partition ranges and fan-outs as Slurm job arrays: one sbatch per array (arrays split at the site's
MaxArraySize), one Pipes context per task, one squeue per tick for the whole array.

Each array (a chunk of the tasks) is a step call of its own for the exactly-once ledger
(``pipes/attempts.py``): a crash or re-execution reattaches to its job, and an attempt that ended with
some tasks failed records which succeeded, so the next attempt runs only the others. Finished tasks are
collected while the array runs (their exit files), their messages go through handlers of their own.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dagster import open_pipes_session
from dagster_pipes import encode_param

from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.pipes.attempts import Placement, StepCallLedger
from dagster_slurm.pipes.client import SlurmJobRequest, env_file_text
from dagster_slurm.pipes.reader import RunFiles
from dagster_slurm.pipes.tasks import (
    ArrayInvocation,
    CapturedContext,
    Kind,
    Task,
    TaskMessages,
    TaskMessagesReader,
    TaskOutcome,
    close_session,
    finish,
    task_contexts,
)
from dagster_slurm.pipes.waiting import TerminateGuard, wait_for_job
from dagster_slurm.slurm.array import array_spec, chunk_ranges, expand_spec, spec_of_script, task_accounting
from dagster_slurm.slurm.parse import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    TERMINAL_STATES,
    JobAccounting,
    parse_sacct,
    parse_squeue,
    significant,
)
from dagster_slurm.slurm.script import JobScript, render_job_script, task_env_case
from dagster_slurm.slurm.watcher import SACCT_LAG_SECONDS, JobWatcher
from dagster_slurm.transport.base import Transport

READ_SIZE = 1 << 20


@dataclass
class _Chunk:
    """One array: tasks ``span`` of the call (its task ids count from 0)."""

    n: int
    span: range
    folder: str
    ledger: StepCallLedger | None = None
    placement: Placement | None = None
    job_id: str | None = None
    running: list[int] = field(default_factory=list)  # task ids (local) of the attempt's array
    earlier: dict[int, str] = field(default_factory=dict)  # task id -> "job_task" that did it before
    outcomes: dict[int, TaskOutcome] = field(default_factory=dict)
    accounting: dict[int, JobAccounting] = field(default_factory=dict)

    @property
    def files(self) -> RunFiles:
        assert self.placement is not None
        return RunFiles(self.placement.run_dir)


class SlurmArrayClient:
    def __init__(self, transport: Transport, watcher: JobWatcher, *, job_timeout: float | None = None,
                 queue_timeout: float | None = None):
        self.transport = transport
        self.watcher = watcher
        self.job_timeout = job_timeout
        self.queue_timeout = queue_timeout
        self._link: Callable[[str], dict[str, object]] = lambda _job_id: {}
        self._directives: Mapping[str, str] = {}

    def run(self, context, request: SlurmJobRequest, *, kind: Kind, keys_or_items: Sequence[object],
            extras: Mapping[str, object] | None, max_concurrent: int | None,
            max_array_size: int) -> ArrayInvocation:
        self._link = request.link
        self._directives = request.directives
        injector, reader = CapturedContext(), TaskMessagesReader()
        with open_pipes_session(context=context, context_injector=injector, message_reader=reader,
                                extras=extras) as session:
            tasks = task_contexts(context, injector.data, kind, keys_or_items, extras)
            spans = chunk_ranges(len(tasks), max_array_size)
            chunks = [_Chunk(c, span, request.folder if len(spans) == 1 else f"{request.folder}-a{c}")
                      for c, span in enumerate(spans)]
            with TerminateGuard() as terminate:  # from the first sbatch to the arrays' end: a terminate cancels
                for chunk in chunks:
                    if terminate.requested:
                        break  # no further array; those submitted are cancelled by the wait
                    self._place(context, request, chunk, tasks, max_concurrent)
                if not any(c.job_id for c in chunks):
                    terminate.raise_if_requested()
                self._wait(context, chunks, tasks, reader, terminate)
            outcomes = self._outcomes(chunks, tasks)
            self._report(chunks, request.keep_run_dir)
            close_session(session, outcomes)
        jobs = [c.job_id for c in chunks if c.job_id]
        summary = {"slurm_array_job_ids": ",".join(jobs), "slurm_tasks": len(tasks),
                   "slurm_node_hours": significant(sum(a.node_hours for c in chunks for a in c.accounting.values())),
                   **request.metadata}
        return finish(context, kind, outcomes, summary)

    # -- placing and submitting
    def _place(self, context, request: SlurmJobRequest, chunk: _Chunk, tasks: Sequence[Task],
               max_concurrent: int | None) -> None:
        labels = [tasks[i].label for i in chunk.span]
        fp = hashlib.sha256(f"{request.fingerprint}|{chunk.span.start}|{labels}".encode()).hexdigest()
        ledger = StepCallLedger(self.transport, chunk.folder, sbatch_timeout=request.sbatch_timeout,
                                warn=context.log.warning)
        chunk.ledger = ledger
        earlier = ledger.attempts()
        for attempt in earlier.values():
            if attempt.fingerprint == fp and attempt.job_id:
                chunk.earlier.update({i: f"{attempt.job_id}_{i}" for i in attempt.done})
        local = range(len(chunk.span))
        if chunk.earlier and all(i in chunk.earlier for i in local):
            context.log.info(f"All {len(local)} tasks of {chunk.folder} succeeded in earlier runs; nothing to submit.")
            return
        placement = ledger.place(run_id=request.run_id, fingerprint=fp, job_name=request.job_name,
                                 present_file="job.sh")
        chunk.placement = placement
        attempt, decision = placement.attempt, placement.decision
        if attempt.job_id is not None:  # reattach or adopt: the array that runs (or ran) these tasks
            chunk.job_id = attempt.job_id
            script = (self.transport.read_from(chunk.files.path("job.sh")) or b"").decode(errors="replace")
            spec = spec_of_script(script)
            chunk.running = expand_spec(spec) if spec else list(local)
            verb = "Reattaching to" if decision.action == "reattach" else "Adopting"
            context.log.info(f"{verb} Slurm array job {attempt.job_id} ({len(chunk.running)} tasks, submitted by "
                             f"run {attempt.run_id}; {decision.why}); run folder {placement.run_dir}")
            return
        chunk.running = [i for i in local if i not in chunk.earlier]
        if chunk.earlier:
            context.log.info(f"{len(chunk.earlier)} tasks succeeded in an earlier run; running the other "
                             f"{len(chunk.running)}.")
        self._stage(request, chunk, tasks, max_concurrent)
        chunk.job_id = ledger.submit(placement, request.lease_dir, "Requested: " + " ".join(
            f"--{k}={v}" for k, v in sorted(request.directives.items())))
        throttle = f", at most {max_concurrent} at a time" if max_concurrent else ""
        context.log.info(f"Submitted Slurm array job {chunk.job_id} ({len(chunk.running)} tasks{throttle}); "
                         f"run folder {placement.run_dir}")

    def _stage(self, request: SlurmJobRequest, chunk: _Chunk, tasks: Sequence[Task],
               max_concurrent: int | None) -> None:
        files = chunk.files
        assert chunk.placement is not None
        batch: list[tuple[str, bytes, int]] = []
        per_task: dict[int, dict[str, str]] = {}
        for i in chunk.running:
            task = tasks[chunk.span[i]]
            context_path = files.path(f"context.{i}.json")
            batch.append((context_path, _json(task.context), 0o600))
            per_task[i] = {"DAGSTER_PIPES_CONTEXT": encode_param({"path": context_path}),
                           "DAGSTER_PIPES_MESSAGES": encode_param({"path": files.path(f"messages.{i}.jsonl")})}
        for folder in sorted({name.rsplit("/", 1)[0] for _local, name in request.uploads if "/" in name}):
            self.transport.mkdir_p(files.path(folder))  # extra files keep their relative names
        for local, name in request.uploads:
            with open(local, "rb") as fh:
                batch.append((files.path(name), fh.read(), 0o600))
        batch.append((files.path("env.sh"), (env_file_text(request.env) + task_env_case(per_task)).encode(), 0o600))
        script = render_job_script(JobScript(
            job_name=chunk.placement.attempt.job_name, run_dir=files.run_dir, command=request.command,
            directives=request.directives, env_file=files.path("env.sh"), activate=request.activate,
            attempt=chunk.placement.attempt.record(), array=array_spec(chunk.running, max_concurrent)))
        batch.append((files.path("job.sh"), script.encode(), 0o700))
        self.transport.write_many(batch)

    # -- waiting and collecting
    def _wait(self, context, chunks: list[_Chunk], tasks: Sequence[Task], reader: TaskMessagesReader,
              terminate: TerminateGuard | None = None) -> None:
        live = [c for c in chunks if c.job_id]
        # the tasks' secrets (env file, contexts) go once the arrays ended; with a cancel, or below
        forget = "; ".join(f"rm -f -- {shlex.quote(c.files.run_dir)}/env.sh {shlex.quote(c.files.run_dir)}/context.*.json"
                           for c in live)

        def collect_finished() -> None:
            for chunk in live:
                if all(i in chunk.outcomes for i in chunk.running):
                    self.watcher.poke()  # all collected (no more listing of its folder): its end is due now
                    continue
                names = set(self.transport.listdir(chunk.files.run_dir) or [])
                ready = [i for i in chunk.running if i not in chunk.outcomes and f"exit_code.{i}" in names]
                if ready:
                    self._collect(context, chunk, ready, tasks, reader)
                if all(i in chunk.outcomes for i in chunk.running):
                    self.watcher.poke()  # every task has ended: the array's end is due now

        for chunk in live:
            assert chunk.job_id is not None
            others = " ".join(c.job_id for c in live if c is not chunk and c.job_id)
            while True:
                wait_for_job(context.log, self.watcher, self.transport, chunk.job_id,
                             job_timeout=self.job_timeout, queue_timeout=self.queue_timeout,
                             cancel_also=(f"scancel {others}; " if others else "") + forget,
                             on_tick=collect_finished, terminate=terminate)
                collect_finished()
                if self._ended(chunk):
                    break
        self._accounting(live)
        for chunk in live:
            rest = [i for i in chunk.running if i not in chunk.outcomes]
            if rest:
                self._collect(context, chunk, rest, tasks, reader)
            for i, outcome in chunk.outcomes.items():  # the accounting arrived after some were collected
                acct = chunk.accounting.get(i)
                if acct is not None:
                    outcome.metadata = {**acct.metadata(self._directives), **self._link(outcome.job_id)}
                    outcome.state = acct.state
        if forget:
            self.transport.run(forget, check=False, retry=True)

    def _ended(self, chunk: _Chunk) -> bool:
        """Whether every task of the array has ended. squeue may briefly list an array's tasks without its
        pending rest while Slurm starts the next ones; a task without an exit file is only taken as ended
        (cancelled, timed out) when squeue lists none of the array's tasks as queued or running."""
        if all(i in chunk.outcomes for i in chunk.running):
            return True
        out = self.transport.run(f"squeue -h -t all -o '{SQUEUE_FORMAT}' -j {chunk.job_id}", check=False, retry=True,
                                 timeout=30)
        return not any(e.state not in TERMINAL_STATES for e in parse_squeue(out.stdout).values())

    def _accounting(self, chunks: list[_Chunk]) -> None:
        """One sacct for all arrays' tasks; tasks missing from it (accounting lag) are asked again for a
        bounded time, then go without metrics."""
        deadline = time.monotonic() + SACCT_LAG_SECONDS
        while True:
            ids = ",".join(c.job_id for c in chunks if c.job_id)
            if not ids:
                return
            result = self.transport.run(f"sacct -P -n -o {SACCT_FIELDS} -j {ids}", check=False, retry=True,
                                        timeout=30)
            for chunk in chunks:
                assert chunk.job_id is not None
                chunk.accounting = task_accounting(parse_sacct(result.stdout), chunk.job_id)
            missing = any(i not in c.accounting or not c.accounting[i].terminal for c in chunks for i in c.running)
            if result.exit_status != 0 or not missing or time.monotonic() > deadline:
                return
            time.sleep(1.0)

    def _collect(self, context, chunk: _Chunk, ready: list[int], tasks: Sequence[Task],
                 reader: TaskMessagesReader) -> None:
        """Read the ended tasks' files (one round trip per MiB), hand their messages to handlers of their
        own and their output to this step's logs, prefixed with the task's label."""
        files = chunk.files
        names = ("exit_code.{}", "messages.{}.jsonl", "stdout.{}.log", "stderr.{}.log")
        wanted = {(i, n): files.path(n.format(i)) for i in ready for n in names}
        data = {key: b"" for key in wanted}
        offsets = dict.fromkeys(wanted, 0)
        pending = list(wanted)
        while pending:
            chunks = self.transport.read_many([(wanted[k], offsets[k]) for k in pending], READ_SIZE)
            more = []
            for key, got in zip(pending, chunks, strict=True):
                if got:
                    data[key] += got
                    offsets[key] += len(got)
                    if len(got) == READ_SIZE:
                        more.append(key)
            pending = more
        for i in ready:
            task = tasks[chunk.span[i]]
            messages = TaskMessages(context, reader, task.label)
            for raw in data[(i, names[1])].split(b"\n"):
                messages.line(raw)
            for stream, name in ((sys.stdout, names[2]), (sys.stderr, names[3])):
                text = data[(i, name)].decode(errors="replace")
                if text:
                    stream.write("".join(f"[{task.label}] {line}\n" for line in text.splitlines()))
                    stream.flush()
            code_text = data[(i, names[0])].strip()
            code = int(code_text) if code_text.isdigit() else None
            acct = chunk.accounting.get(i)
            state = acct.state if acct is not None else ("COMPLETED" if code == 0 else "FAILED" if code else "UNKNOWN")
            stderr_lines = data[(i, names[3])].decode(errors="replace").splitlines()
            chunk.outcomes[i] = TaskOutcome(
                task, state, job_id=f"{chunk.job_id}_{i}", exit_code=code, opened=messages.opened,
                results=messages.results(), stderr_tail="\n".join(stderr_lines[-20:]), exception=messages.exception,
                metadata={**(acct.metadata(self._directives) if acct is not None else {"slurm_job_id": f"{chunk.job_id}_{i}"}),
                          **self._link(f"{chunk.job_id}_{i}")})
            outcome = chunk.outcomes[i]
            context.log.info(f"[{task.label}] Slurm task {outcome.job_id} ended "
                             + ("successfully" if outcome.ok else f"{state}, exit status {code}"))

    def _outcomes(self, chunks: list[_Chunk], tasks: Sequence[Task]) -> list[TaskOutcome]:
        out: list[TaskOutcome] = []
        for chunk in chunks:
            for i in range(len(chunk.span)):
                task = tasks[chunk.span[i]]
                if i in chunk.outcomes:
                    out.append(chunk.outcomes[i])
                elif i in chunk.earlier:
                    out.append(TaskOutcome(task, "COMPLETED", job_id=chunk.earlier[i], reused=True,
                                           metadata={"slurm_job_id": chunk.earlier[i], "slurm_state": "COMPLETED",
                                                     "slurm_reused": "done by an earlier run of this step"}))
                else:
                    raise DagsterSlurmError(f"task {i} of {chunk.folder} has no outcome (internal error)")
        return out

    def _report(self, chunks: list[_Chunk], keep: bool) -> None:
        for chunk in chunks:
            if chunk.placement is None or chunk.ledger is None:
                continue
            ok = [i for i in chunk.running if chunk.outcomes[i].ok]
            if len(ok) == len(chunk.running):
                chunk.ledger.report(chunk.placement, "COMPLETED", success=True, keep=keep)
            else:
                chunk.ledger.report(chunk.placement, "FAILED", success=False, keep=True,
                                    done=sorted(ok + list(chunk.earlier)))


def _json(data: Mapping[str, object]) -> bytes:
    return json.dumps(data).encode()

