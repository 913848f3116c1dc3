"""The Slurm Pipes client: stage a run's files, submit (or reattach to) its job, stream it, report it."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster import PipesClient, PipesClientCompletedInvocation, PipesExecutionResult, open_pipes_session

from dagster_slurm.errors import DagsterSlurmError, SlurmJobError, tail
from dagster_slurm.pipes import allocation as shared
from dagster_slurm.pipes.allocation import AllocationRequest, Held
from dagster_slurm.pipes.attempts import Placement, StepCallLedger
from dagster_slurm.pipes.context import SlurmContextInjector
from dagster_slurm.pipes.failure import exception_line, exit_text, stderr_metadata
from dagster_slurm.pipes.reader import RunFiles, SlurmRunMessageReader
from dagster_slurm.pipes.waiting import TerminateGuard, wait_for_job
from dagster_slurm.slurm.allocation import allocation_of, is_step
from dagster_slurm.slurm.ledger import append_command
from dagster_slurm.slurm.parse import TERMINAL_STATES, JobAccounting, parse_timestamp, significant
from dagster_slurm.slurm.script import (
    ACTIVATION_FAILED,
    SIGNALLED_FILE,
    JobScript,
    forwarded_signal,
    render_job_script,
)
from dagster_slurm.slurm.watcher import JobWatcher
from dagster_slurm.transport.base import Transport

CONTEXT_FILE = "context.json"  # the Pipes context (extras included), 0600, removed when the job ended


NO_PIPES_HINT = (
    "The payload ran but never opened Dagster Pipes. It must call\n"
    "    from dagster_pipes import open_dagster_pipes\n"
    "    with open_dagster_pipes() as pipes:\n"
    "        ...\n"
    "so that its logs, metadata and checks reach Dagster."
)


@dataclass
class SlurmJobRequest:
    """What to run: produced by the compute layer, consumed by :class:`SlurmPipesClient`."""

    folder: str  # absolute: this step call's folder (ledger + attempt run folders)
    run_id: str  # the Dagster run asking
    fingerprint: str  # of what the job runs; an earlier job with another fingerprint is not reused
    job_name: str  # each attempt's job is named this plus a short random suffix
    command: Sequence[str]
    directives: Mapping[str, str]
    activate: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    uploads: Sequence[tuple[str, str]] = ()  # (local path, file name in the run folder, the job's cwd)
    keep_run_dir: bool = False
    metadata: Mapping[str, object] = field(default_factory=dict)  # added to the materialization
    lease_dir: str | None = None  # a file named after the job id goes here, so gc keeps the env
    sbatch_timeout: float = 120.0  # cluster-side bound of one sbatch call
    job_url: Callable[[str], str | None] = lambda _job_id: None  # a link to the job in the site's web UI
    requeue_on: Sequence[str] = ()  # end states after which the job is submitted again (SlurmResource.requeue_on)
    max_requeues: int = 0
    allocation: AllocationRequest | None = None  # run as a step of this shared allocation

    @property
    def checkpoint_dir(self) -> str:
        """Per step call (identity): kept across requeues and re-executions, removed with the step's success."""
        return f"{self.folder}/checkpoint"

    def link(self, job_id: str) -> dict[str, object]:
        """``slurm_job_url`` metadata for ``job_id`` when a link template is set."""
        url = self.job_url(job_id)
        return {"slurm_job_url": dg.MetadataValue.url(url)} if url else {}


def env_file_text(env: Mapping[str, str]) -> str:
    """Shell ``export`` lines; names were checked by ``config.env.check_env_names``."""
    return "".join(f"export {key}={shlex.quote(str(value))}\n" for key, value in env.items())


# Slurm's start estimate behind a job without a time limit lies centuries ahead (26.05 gave year 6110):
# no estimate at all, said as such.
NO_ESTIMATE_BEYOND = 366 * 24 * 3600


def start_estimate_text(job_id: str, estimate: tuple[str, str, str, str]) -> str:
    now, start, nodes, partition = estimate
    wait = _seconds_between(now, start)
    if wait is not None and wait > NO_ESTIMATE_BEYOND:
        return (f"Slurm cannot say when job {job_id} will start on {nodes} in partition {partition}: its estimate "
                f"({start}) lies beyond any time limit, so a job it waits for has none (sbatch --test-only).")
    return (f"Slurm expects job {job_id} to start at {start} (cluster time)"
            + (f", in about {wait} s," if wait is not None and wait > 0 else ",")
            + f" on {nodes} in partition {partition} (sbatch --test-only).")


def estimate_metadata(estimate: tuple[str, str, str, str] | None) -> dict[str, Any]:
    """The expected start (sbatch --test-only, just before submitting) as metadata; none when Slurm has no
    meaningful one."""
    if not estimate:
        return {}
    now, start, _nodes, _partition = estimate
    wait = _seconds_between(now, start)
    if wait is not None and wait > NO_ESTIMATE_BEYOND:
        return {}
    return {"slurm_expected_start": start,
            **({"slurm_expected_wait_seconds": max(wait, 0)} if wait is not None else {})}


def _seconds_between(earlier: str, later: str) -> int | None:
    a, b = parse_timestamp(earlier), parse_timestamp(later)
    return int(b - a) if a is not None and b is not None else None


class SlurmCompletedInvocation(PipesClientCompletedInvocation):
    """Dagster's completed invocation, except that asset check results get only ``check_metadata`` (the
    job id, its link) after the payload's own: the materialization carries the job's accounting."""

    def __init__(self, session, metadata: Mapping[str, Any], check_metadata: Mapping[str, Any]):
        super().__init__(session, metadata=metadata)
        self.session = session
        self.check_metadata = dict(check_metadata)

    def get_results(self, *, implicit_materializations: bool = True) -> Sequence[PipesExecutionResult]:
        results = self.session.get_results(implicit_materializations=implicit_materializations)
        return tuple(r._replace(metadata={**(r.metadata or {}), **(self.check_metadata if isinstance(r, dg.AssetCheckResult)
                                                                    else self.metadata)}) for r in results)


class SlurmPipesClient(PipesClient):
    """Runs one payload as a Slurm batch job (or finds the one already running it) and streams its
    Pipes messages back."""

    def __init__(self, transport: Transport, watcher: JobWatcher, *, job_timeout: float | None = None,
                 queue_timeout: float | None = None, output_poll_max: float = 0.5):
        self.transport = transport
        self.watcher = watcher
        self.job_timeout = job_timeout
        self.queue_timeout = queue_timeout
        self.output_poll_max = output_poll_max

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        request: SlurmJobRequest,
        extras: Mapping[str, object] | None = None,
    ) -> PipesClientCompletedInvocation:
        ledger = StepCallLedger(self.transport, request.folder, sbatch_timeout=request.sbatch_timeout,
                                warn=context.log.warning)
        ended: list[SlurmJobError] = []  # earlier attempts of this call that ended in a requeue_on state
        while True:
            try:
                session, acct, job_id, estimate = self._attempt(context, request, extras, ledger)
                break
            except SlurmJobError as err:
                if err.state not in request.requeue_on:
                    raise
                if len(ended) >= request.max_requeues:
                    jobs = ", ".join(e.job_id for e in [*ended, err])
                    raise SlurmJobError(
                        f"{err.description}\nGave up after {len(ended)} requeue(s) (SlurmResource.max_requeues="
                        f"{request.max_requeues}); the attempts were Slurm jobs {jobs}.",
                        err.job_id, err.state, err.exit_code, err.stderr_tail,
                        {**(err.metadata or {}), **self._requeue_metadata([*ended, err])}) from None
                ended.append(err)
                context.log.warning(f"Slurm job {err.job_id} ended {err.state}: submitting it again (requeue "
                                    f"{len(ended)} of at most {request.max_requeues}); the payload resumes from "
                                    f"DAGSTER_SLURM_CHECKPOINT_DIR={request.checkpoint_dir}")
        metadata: dict[str, Any] = {**acct.metadata(request.directives), **estimate, **request.metadata,
                                    **request.link(job_id)}
        if ended:
            metadata.update(self._requeue_metadata(ended, acct))
        return SlurmCompletedInvocation(session, metadata, {"slurm_job_id": dg.MetadataValue.text(job_id),
                                                            **request.link(job_id)})

    @staticmethod
    def _requeue_metadata(ended: Sequence[SlurmJobError], final: JobAccounting | None = None) -> dict[str, Any]:
        values = [(e.metadata or {}).get("slurm_node_hours") for e in ended]
        total = sum(float(v.value) for v in values if v is not None and isinstance(v.value, (int, float))) + (final.node_hours if final is not None else 0.0)
        return {"slurm_requeues": len(ended) if final is not None else len(ended) - 1,
                "slurm_attempt_job_ids": ", ".join([*(e.job_id for e in ended), *([final.job_id] if final else [])]),
                "slurm_node_hours_all_attempts": significant(total)}

    def _attempt(self, context, request: SlurmJobRequest, extras: Mapping[str, object] | None,
                 ledger: StepCallLedger):
        """One job of this step call: submit (or reattach to) it, stream it, and return (session, accounting,
        job id) when it succeeded; raise SlurmJobError otherwise."""
        placement = ledger.place(run_id=request.run_id, fingerprint=request.fingerprint, job_name=request.job_name)
        self._say(context, placement)
        files = RunFiles(placement.run_dir)
        reader = SlurmRunMessageReader(self.transport, files, on_exit=self.watcher.poke,
                                       min_interval=self.watcher.min_interval, max_interval=self.output_poll_max)
        injector = SlurmContextInjector(files.path(CONTEXT_FILE), write=placement.attempt.job_id is None)
        with open_pipes_session(
            context=context, context_injector=injector, message_reader=reader, extras=extras
        ) as session:
            job_id = placement.attempt.job_id
            held: Held | None = None
            # the job's secrets go once it is over (a queued job still sources them): with a cancel, or below
            forget_secrets = "rm -f -- " + " ".join(shlex.quote(files.path(n)) for n in ("env.sh", CONTEXT_FILE))
            with TerminateGuard() as terminate:  # from staging to the job's end: a terminate cancels it
                if job_id is None:
                    if request.requeue_on:
                        self.transport.mkdir_p(request.checkpoint_dir)
                    if request.allocation is not None:
                        held = self._acquire(context, request)
                        placement.attempt.allocation = held.folder
                    self._stage(request, placement, {**request.env, **session.get_bootstrap_env_vars()},
                                injector.pending, held)
                    terminate.raise_if_requested()  # nothing submitted yet
                    if held is not None:
                        held, job_id = self._start_step(context, request, placement, ledger, held, terminate)
                    else:
                        job_id = ledger.submit(placement, request.lease_dir, self._describe(request))
                        placement.attempt.job_id = job_id
                        context.log.info(f"Submitted Slurm job {job_id} ({placement.attempt.job_name}); "
                                         f"run folder {files.run_dir}")
                        if placement.estimate:
                            context.log.info(start_estimate_text(job_id, placement.estimate))
                elif placement.attempt.allocation:
                    held = Held(placement.attempt.allocation, allocation_of(job_id), "RUNNING", joined=True)
                    if not is_step(job_id):  # requested by an orchestrator that went before the step started
                        job_id = self._step_started(context, request, placement, ledger, held, terminate)
                reader.start()
                acct = wait_for_job(context.log, self.watcher, self.transport, job_id, job_timeout=self.job_timeout,
                                    queue_timeout=self.queue_timeout, cancel_also=forget_secrets,
                                    exit_file=files.exit_code, on_exit=reader.wake, terminate=terminate)
            lost = ""
            if held is not None:
                acct, lost = self._step_outcome(request, held, acct)
            folder_gone = False
            try:  # the job has ended: from here on its secrets go, whatever happens
                reader.drain()
                try:
                    self._raise_for_outcome(acct, reader, session.message_handler.received_opened_message, files,
                                            {**acct.metadata(request.directives), **self._step_metadata(held, job_id),
                                             **request.link(allocation_of(job_id))}, request.directives, lost)
                except SlurmJobError:
                    ledger.report(placement, acct.state, success=False, keep=True)
                    self._after_step(request, held)
                    raise
                ledger.report(placement, acct.state, success=True, keep=request.keep_run_dir)
                folder_gone = not request.keep_run_dir
                self._after_step(request, held)
            finally:
                if not folder_gone:
                    self.transport.run(forget_secrets, check=False, retry=True)
        return session, acct, job_id, {**estimate_metadata(placement.estimate), **self._step_metadata(held, job_id)}

    # -- a step of a shared allocation
    def _acquire(self, context, request: SlurmJobRequest) -> Held:
        assert request.allocation is not None
        return shared.acquire(self.transport, request.allocation, user=request.folder.rsplit("/", 1)[-1],
                              log=context.log.info, sbatch_timeout=request.sbatch_timeout)

    def _start_step(self, context, request: SlurmJobRequest, placement: Placement, ledger: StepCallLedger,
                    held: Held, terminate: TerminateGuard) -> tuple[Held, str]:
        """Request the step (in the next generation if the holder just ended) and wait until it runs."""
        assert request.allocation is not None
        attempt = placement.attempt
        for _ in range(5):
            requested = shared.drop(self.transport, held, request.allocation, placement.run_dir, attempt.job_name)
            if requested is not None:
                break
            context.log.info(f"Allocation job {held.job_id} ended itself (idle) just now; using a fresh one.")
            held = self._acquire(context, request)
            attempt.allocation = held.folder
            self.transport.write_many(self._drop_files(request, placement, held))
        else:
            raise DagsterSlurmError(f"Allocation {request.allocation.key} kept ending before this step could join it.")
        attempt.job_id = held.job_id
        return held, self._step_started(context, request, placement, ledger, held, terminate)

    def _step_started(self, context, request: SlurmJobRequest, placement: Placement, ledger: StepCallLedger,
                      held: Held, terminate: TerminateGuard) -> str:
        step_id = shared.wait_started(self.transport, held, placement.run_dir, placement.attempt.job_name,
                                      log=context.log, queue_timeout=self.queue_timeout, terminate=terminate)
        placement.attempt.job_id = step_id
        self.transport.run(append_command(ledger.folder, placement.attempt.record()), check=False, retry=True)
        context.log.info(f"Slurm step {step_id} runs in allocation {held.job_id} "
                         f"({'joined' if held.joined else 'no further queue wait'}); run folder {placement.run_dir}")
        return step_id

    def _drop_files(self, request: SlurmJobRequest, placement: Placement, held: Held) -> list[tuple[str, bytes, int]]:
        assert request.allocation is not None
        return shared.drop_files(held=held, request=request.allocation, run_dir=placement.run_dir,
                                 name=placement.attempt.job_name, ledger_folder=placement.folder,
                                 record=placement.attempt.record(), lease_dir=request.lease_dir)

    def _step_outcome(self, request: SlurmJobRequest, held: Held, acct: JobAccounting) -> tuple[JobAccounting, str]:
        """A step that did not complete while its allocation ended: the allocation's end is its reason (its
        state decides requeue_on)."""
        held.queue_wait = shared.queue_wait(self.transport, held)
        if acct.state == "COMPLETED":
            return acct, ""
        state = shared.allocation_state(self.transport, held)
        if state is None or state not in TERMINAL_STATES or state == "COMPLETED":
            return acct, ""
        limit = request.allocation.settings.get("time_limit") if request.allocation else None
        why = {"TIMEOUT": f"its time limit (SlurmAllocation.time_limit={limit}) ended while this step ran; raise it, "
                          "or give the asset a time_limit so that it fails before it starts when it would not fit"}.get(
            state, f"it ended {state}")
        return (JobAccounting(**{**acct.__dict__, "state": state}),
                f"The step's allocation (Slurm job {held.job_id}) is gone: {why}.")

    @staticmethod
    def _step_metadata(held: Held | None, job_id: str) -> dict[str, Any]:
        if held is None:
            return {}
        out: dict[str, Any] = {"slurm_allocation_id": held.job_id, "slurm_step_id": job_id}
        wait = held.queue_wait
        if wait is not None:
            out["slurm_allocation_queue_wait_seconds"] = wait
            out["slurm_queue_wait_saved_seconds"] = wait if held.joined else 0
        return out

    def _after_step(self, request: SlurmJobRequest, held: Held | None) -> None:
        """scope='run': the run's last step releases the allocation (its holder ends when idle)."""
        if held is None or request.allocation is None:
            return
        try:
            over = request.allocation.run_over()
        except Exception:  # noqa: BLE001 - best effort: the holder's idle_timeout ends it anyway
            over = False
        shared.leave(self.transport, request.allocation, request.folder.rsplit("/", 1)[-1], held, over)

    # -- steps
    @staticmethod
    def _say(context, placement: Placement) -> None:
        decision, attempt = placement.decision, placement.attempt
        if decision.still_running is not None:
            old = decision.still_running
            context.log.warning(
                f"Slurm job {old.job_id} (submitted by run {old.run_id}) runs an older version of this step "
                "(its payload, inputs or settings differ) and is still queued or running. Submitting a new "
                f"job; stop the old one with `scancel {old.job_id}` if it is no longer wanted."
            )
        if decision.action == "reattach":
            context.log.info(f"Reattaching to Slurm job {attempt.job_id} submitted by run {attempt.run_id} "
                             f"({decision.why}); run folder {placement.run_dir}")
        elif decision.action == "adopt":
            context.log.info(f"Adopting Slurm job {attempt.job_id} submitted by run {attempt.run_id}: it "
                             f"completed while no orchestrator watched it; replaying its results, no new job.")
        elif decision.attempt is not None:
            context.log.info(f"Not reusing an earlier job: {decision.why}.")

    @staticmethod
    def _describe(request: SlurmJobRequest) -> str:
        return (f"Requested: {' '.join(f'--{k}={v}' for k, v in sorted(request.directives.items()))}. "
                "Check SlurmQueueConfig (partition, time_limit, cpus, mem, ...) or the asset's "
                "resource_requirements / slurm_resources metadata.")

    def _stage(self, request: SlurmJobRequest, placement: Placement, env: Mapping[str, str],
               context_data: bytes | None, held: Held | None = None) -> None:
        """The job's files, written in one batch (one round trip's time): Pipes context, payload,
        env file (0600: secrets) and job script."""
        files = RunFiles(placement.run_dir)
        batch: list[tuple[str, bytes, int]] = []
        if context_data is not None:
            batch.append((files.path(CONTEXT_FILE), context_data, 0o600))
        for folder in sorted({name.rsplit("/", 1)[0] for _local, name in request.uploads if "/" in name}):
            self.transport.mkdir_p(files.path(folder))  # extra files keep their relative names
        for local, name in request.uploads:
            with open(local, "rb") as fh:
                batch.append((files.path(name), fh.read(), 0o600))
        batch.append((files.path("env.sh"), env_file_text(env).encode(), 0o600))
        script = render_job_script(
            JobScript(
                job_name=placement.attempt.job_name,
                run_dir=files.run_dir,
                command=request.command,
                directives=request.directives,
                env_file=files.path("env.sh"),
                activate=request.activate,
                attempt=placement.attempt.record(),
            )
        )
        batch.append((files.path("job.sh"), script.encode(), 0o700))
        if held is not None:
            batch += self._drop_files(request, placement, held)
        self.transport.write_many(batch)

    def _raise_for_outcome(self, acct: JobAccounting, reader: SlurmRunMessageReader, opened: bool,
                           files: RunFiles, metadata: dict[str, Any],
                           request_directives: Mapping[str, str] | None = None, lost: str = "") -> None:
        """Raise unless the job and its payload succeeded. The failure's text leads with the payload's own
        exception line and Slurm's verdict; it carries the job's figures, the stderr tail (once, as
        markdown) and, as path metadata, the run folder and the logs kept on the cluster."""
        stderr_tail = tail("\n".join(reader.state.stderr_tail))
        metadata = {**metadata, "slurm_run_folder": dg.MetadataValue.path(files.run_dir),
                    "slurm_stdout": dg.MetadataValue.path(files.stdout),
                    "slurm_stderr": dg.MetadataValue.path(files.stderr), **stderr_metadata(stderr_tail)}
        payload_rc = reader.state.exit_code
        if acct.state == "COMPLETED" and payload_rc in (0, None) and opened:
            return
        if forwarded_signal(request_directives or {}) and acct.state in ("FAILED", "COMPLETED", "CANCELLED") \
                and self.transport.stat_size(files.path(SIGNALLED_FILE)) is not None:
            # the payload was signalled before the time limit and ended: for requeue_on, a timeout (the metadata
            # keeps sacct's own state and says so)
            acct = JobAccounting(**{**acct.__dict__, "state": "TIMEOUT"})
            metadata = {**metadata, "slurm_signalled_before_timeout": True}
        if not acct.accounted and acct.state in ("COMPLETED", "UNKNOWN") and payload_rc == 0 and opened:
            return  # no accounting, but the job script recorded the payload's success
        if acct.state == "COMPLETED" and payload_rc in (0, None):
            raise SlurmJobError(NO_PIPES_HINT + f"\n(Slurm job {acct.job_id}; output in {files.run_dir})",
                                acct.job_id, acct.state, acct.exit_code, stderr_tail, metadata)
        what = {
            "TIMEOUT": "the job hit its time limit, or ended after the signal before it (raise time_limit, or "
                       "requeue it: SlurmResource.requeue_on)",
            "OUT_OF_MEMORY": "the job ran out of memory (raise mem)",
            "CANCELLED": "the job was cancelled",
            "NODE_FAIL": "a node failed",
            "PREEMPTED": "the job was preempted",
        }.get(acct.state, "")
        if payload_rc == ACTIVATION_FAILED:
            what = f"its environment could not be set up (sourcing env.sh / activate.sh failed, status {payload_rc})"
        exit_code = acct.exit_code if acct.accounted else (f"{payload_rc}:0" if payload_rc is not None else "")
        headline = exception_line(reader.state.exception, stderr_tail)
        text = ((f"{headline}\n" if headline else "") + (f"{lost}\n" if lost else "")
                + f"Slurm {'step' if is_step(acct.job_id) else 'job'} {acct.job_id} {acct.state}, {exit_text(exit_code, payload_rc)}"
                + (f": {what}" if what else "") + ".\n"
                + f"Its job script and logs stay on the cluster in {files.run_dir} (stdout.log, stderr.log)"
                + ("; the stderr tail is in this failure's metadata." if stderr_tail else "."))
        raise SlurmJobError(text, acct.job_id, acct.state, acct.exit_code, stderr_tail, metadata)
