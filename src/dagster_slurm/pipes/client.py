"""The Slurm Pipes client: stage a run's files, submit (or reattach to) its job, stream it, report it."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster import PipesClient, PipesClientCompletedInvocation, PipesEnvContextInjector, open_pipes_session
from dagster._core.errors import DagsterExecutionInterruptedError

from dagster_slurm.errors import (
    ConfigurationError,
    RemoteCommandError,
    RemoteFileError,
    SlurmJobError,
    tail,
)
from dagster_slurm.pipes.reader import RunFiles, SlurmRunMessageReader
from dagster_slurm.slurm.parse import JobAccounting, is_transient_sbatch_error, parse_sbatch_job_id
from dagster_slurm.slurm.script import JobScript, render_job_script
from dagster_slurm.slurm.watcher import JobWatcher
from dagster_slurm.transport.base import Transport

log = logging.getLogger("dagster_slurm.pipes")

SBATCH_ATTEMPTS = 5  # transient sbatch failures are retried after 1, 2, 4, 8 s

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

    run_dir: str  # absolute, unique per run, step and retry
    job_name: str
    command: Sequence[str]
    directives: Mapping[str, str]
    activate: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    uploads: Sequence[tuple[str, str]] = ()  # (local path, remote path)
    keep_run_dir: bool = False
    metadata: Mapping[str, object] = field(default_factory=dict)  # added to the materialization
    lease_dir: str | None = None  # a file named after the job id goes here, so gc keeps the env


def env_file_text(env: Mapping[str, str]) -> str:
    for key in env:
        if not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ConfigurationError(f"extra_env: {key!r} is not a valid environment variable name.")
    return "".join(f"export {key}={shlex.quote(str(value))}\n" for key, value in env.items())


class SlurmPipesClient(PipesClient):
    """Runs one payload as a Slurm batch job and streams its Pipes messages back."""

    def __init__(self, transport: Transport, watcher: JobWatcher, *, job_timeout: float | None = None,
                 output_poll_max: float = 0.5):
        self.transport = transport
        self.watcher = watcher
        self.job_timeout = job_timeout
        self.output_poll_max = output_poll_max

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        request: SlurmJobRequest,
        extras: Mapping[str, object] | None = None,
    ) -> PipesClientCompletedInvocation:
        files = RunFiles(request.run_dir)
        reader = SlurmRunMessageReader(self.transport, files, on_exit=self.watcher.poke,
                                       min_interval=self.watcher.min_interval, max_interval=self.output_poll_max)
        with open_pipes_session(
            context=context, context_injector=PipesEnvContextInjector(), message_reader=reader, extras=extras
        ) as session:
            job_id = self._existing_job(files)
            if job_id:
                context.log.info(f"Reattaching to Slurm job {job_id} submitted earlier for this step.")
            else:
                self._stage(request, {**request.env, **session.get_bootstrap_env_vars()})
                job_id = self._submit(files, request)
                context.log.info(f"Submitted Slurm job {job_id} ({request.job_name}); run folder {files.run_dir}")
            reader.start()
            acct = self._wait(context, job_id)
            reader.drain()
            self._raise_for_outcome(acct, reader, session.message_handler.received_opened_message, files)
        if not request.keep_run_dir:
            self.transport.run(f"rm -rf -- {shlex.quote(files.run_dir)}", check=False)
        metadata: dict[str, Any] = {**acct.metadata(), **request.metadata}
        return PipesClientCompletedInvocation(session, metadata=metadata)

    # -- steps
    def _existing_job(self, files: RunFiles) -> str | None:
        """A job id recorded by an earlier attempt of this same step (same run, step and retry)."""
        data = self.transport.read_from(files.path("job_id"))
        return data.decode().strip() if data and data.strip().isdigit() else None

    def _stage(self, request: SlurmJobRequest, env: Mapping[str, str]) -> None:
        t = self.transport
        try:
            t.mkdir_p(request.run_dir)
        except RemoteFileError as exc:
            raise ConfigurationError(
                f"Cannot create the run folder {request.run_dir} on the cluster: {exc}. "
                "Set SlurmResource.remote_base (SLURM_DEPLOYMENT_BASE_PATH) to a folder you can write."
            ) from None
        for local, remote in request.uploads:
            t.put_file(local, remote)
        files = RunFiles(request.run_dir)
        t.write_bytes(files.path("env.sh"), env_file_text(env).encode(), mode=0o600)
        script = render_job_script(
            JobScript(
                job_name=request.job_name,
                run_dir=request.run_dir,
                command=request.command,
                directives=request.directives,
                env_file=files.path("env.sh"),
                activate=request.activate,
            )
        )
        t.write_bytes(files.path("job.sh"), script.encode(), mode=0o700)

    def _submit(self, files: RunFiles, request: SlurmJobRequest) -> str:
        q = shlex.quote
        lease = f" && {{ touch {q(request.lease_dir)}/\"$jid\" 2>/dev/null || true; }}" if request.lease_dir else ""
        command = (
            f"cd {q(files.run_dir)} && jid=$(sbatch --parsable job.sh) && "
            f"printf '%s\\n' \"$jid\" > job_id{lease} && printf '%s\\n' \"$jid\""
        )
        for attempt in range(SBATCH_ATTEMPTS):
            try:
                result = self.transport.run(command, timeout=60)
                return parse_sbatch_job_id(result.stdout)
            except RemoteCommandError as exc:
                if is_transient_sbatch_error(exc.stderr_tail) and attempt + 1 < SBATCH_ATTEMPTS:
                    delay = 2.0 ** attempt
                    log.warning("sbatch failed transiently (%s); retrying in %.0f s", exc.stderr_tail, delay)
                    time.sleep(delay)
                    continue
                if is_transient_sbatch_error(exc.stderr_tail):
                    raise SlurmJobError(
                        f"sbatch kept failing after {SBATCH_ATTEMPTS} attempts: {exc.stderr_tail}. The Slurm "
                        "controller is busy or unreachable; retry the run later.", "", "NOT_SUBMITTED", "",
                        exc.stderr_tail) from None
                raise ConfigurationError(
                    f"sbatch rejected the job: {exc.stderr_tail or 'no message'}\n"
                    f"Requested: {' '.join(f'--{k}={v}' for k, v in sorted(request.directives.items()))}. "
                    "Check SlurmQueueConfig (partition, time_limit, cpus, mem, ...) or the asset's "
                    "resource_requirements / slurm_resources metadata."
                ) from None
        raise AssertionError("unreachable")

    def _wait(self, context, job_id: str) -> JobAccounting:
        handle = self.watcher.watch(job_id)
        deadline = None if self.job_timeout is None else time.monotonic() + self.job_timeout
        last_state = ""
        try:
            while not handle.wait(0.5):
                if handle.state != last_state:
                    last_state = handle.state
                    context.log.debug(f"Slurm job {job_id}: {handle.state} {handle.reason}".rstrip())
                if deadline is not None and time.monotonic() > deadline:
                    raise SlurmJobError(
                        f"Slurm job {job_id} did not finish within SlurmResource.job_timeout="
                        f"{self.job_timeout:g} s (last state {handle.state}). It was left running; "
                        f"cancel it with `scancel {job_id}` if needed.",
                        job_id, handle.state, "", "",
                    )
        except (DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning(f"Run terminated: cancelling Slurm job {job_id} (scancel).")
            self.transport.run(f"scancel {job_id}", check=False, timeout=30)
            raise
        finally:
            self.watcher.forget(job_id)
        if handle.error is not None:
            raise handle.error
        assert handle.final is not None
        return handle.final

    def _raise_for_outcome(self, acct: JobAccounting, reader: SlurmRunMessageReader, opened: bool,
                           files: RunFiles) -> None:
        stderr_tail = tail("\n".join(reader.state.stderr_tail))
        payload_rc = reader.state.exit_code
        if acct.state == "COMPLETED" and payload_rc in (0, None) and opened:
            return
        if acct.state == "COMPLETED" and payload_rc in (0, None):
            raise SlurmJobError(NO_PIPES_HINT + f"\n(Slurm job {acct.job_id}; output in {files.run_dir})",
                                acct.job_id, acct.state, acct.exit_code, stderr_tail)
        what = {
            "FAILED": "the payload exited non-zero",
            "TIMEOUT": "the job hit its time limit (raise time_limit)",
            "OUT_OF_MEMORY": "the job ran out of memory (raise mem)",
            "CANCELLED": "the job was cancelled",
            "NODE_FAIL": "a node failed",
            "PREEMPTED": "the job was preempted",
        }.get(acct.state, "the payload failed")
        if acct.state == "COMPLETED" and payload_rc:
            what = f"the payload exited with status {payload_rc}"
        text = f"Slurm job {acct.job_id} ended {acct.state} (exit code {acct.exit_code}): {what}."
        if stderr_tail:
            text += f"\nstderr (tail):\n{stderr_tail}"
        print(text, file=sys.stderr)
        raise SlurmJobError(text, acct.job_id, acct.state, acct.exit_code, stderr_tail)
