"""A step of a shared allocation: acquire the allocation (or join it), request the step, wait for it to start.

The cluster-side protocol is in :mod:`dagster_slurm.slurm.allocation`. Everything here goes through the
transport; the holder job owns the allocation's life on the cluster, so no local process has to outlive a run.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from dagster_slurm.errors import (
    ConfigurationError,
    DagsterSlurmError,
    RemoteFileError,
    SlurmJobError,
    SSHConnectionError,
)
from dagster_slurm.pipes.attempts import DROP_TIMEOUT
from dagster_slurm.slurm.allocation import (
    ALLOCATION_ENDED,
    DROP_REFUSED,
    DROP_STUCK,
    HOLDER,
    acquire_read_command,
    drop_script,
    leave_command,
    parse_drop,
    parse_generation,
    parse_step_probe,
    render_holder,
    step_environment,
    step_probe_command,
    submit_holder_command,
)
from dagster_slurm.slurm.ledger import (
    GUARD_TAKEN,
    LEDGER,
    SlurmUnavailable,
    ledger_line,
    parse_state,
    state_command,
)
from dagster_slurm.slurm.parse import TERMINAL_STATES
from dagster_slurm.transport.base import Transport

ACQUIRE_BOUND = 180.0  # seconds to find or create a holder job before giving up
LOST_DROP_MARGIN = 10.0
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


@dataclass
class AllocationRequest:
    """The allocation a step runs in, as the compute layer resolved it."""

    key_dir: str  # {base}/allocations/{key}
    key: str
    directives: Mapping[str, str]  # the holder's sbatch options
    settings: Mapping[str, object]  # SlurmAllocation's fields
    step_options: Sequence[str]  # srun options of this step
    need_seconds: int  # the step's own time limit (0: none)
    idle_timeout: float
    run_over: Callable[[], bool] = lambda: False  # scope="run": whether the run has no further step

    def describe(self) -> str:
        return "SlurmAllocation(" + ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if v is not None) + ")"


@dataclass
class Held:
    folder: str  # the generation's folder
    job_id: str
    state: str = "PENDING"  # when found
    joined: bool = False  # found running (not made, not waited for by this step)
    queue_wait: int | None = None  # seconds the allocation waited in the queue


def _alloc_state(transport: Transport, job_id: str, sleep: Callable[[float], None] = time.sleep) -> str | None:
    for attempt in range(4):
        out = transport.run(state_command(job_id), check=False, retry=True)
        try:
            return parse_state(out.stdout, job_id)
        except SlurmUnavailable:
            sleep(1.0 + attempt)
    raise DagsterSlurmError(f"Cannot tell whether allocation job {job_id} is still there: squeue/sacct do not "
                            "answer. Nothing was started; re-execute the step when the Slurm controller answers.")


def acquire(transport: Transport, request: AllocationRequest, *, user: str, log: Callable[[str], None],
            sbatch_timeout: float, sleep: Callable[[float], None] = time.sleep) -> Held:
    """The allocation's live holder job, submitted by this call if there is none (exactly one per
    generation: the generation's folder is claimed with mkdir before its sbatch)."""
    deadline = time.monotonic() + ACQUIRE_BOUND + sbatch_timeout
    own_failure = ""
    while time.monotonic() < deadline:
        try:
            gen = parse_generation(transport.run(acquire_read_command(request.key_dir, user), retry=True).stdout)
        except SSHConnectionError:
            sleep(1.0)
            continue
        if gen.number is not None and not gen.ended:
            folder = f"{request.key_dir}/{gen.number}"
            if gen.failed:
                if own_failure:
                    raise ConfigurationError(f"sbatch refused the allocation's holder job: {gen.failed.strip()}\n"
                                             f"Check {request.describe()} (partition, cpus, mem, time_limit).")
            elif gen.job_id:
                # squeue's word in the same command; sacct's only when squeue does not list the job
                state = gen.state if gen.state in ACTIVE else _alloc_state(transport, gen.job_id, sleep)
                if state is not None and state not in TERMINAL_STATES:
                    return Held(folder, gen.job_id, state, joined=state == "RUNNING")
            elif gen.age < sbatch_timeout + 30:  # another process is submitting it
                sleep(0.3)
                continue
        n = 0 if gen.number is None else gen.number + 1
        folder = f"{request.key_dir}/{n}"
        try:
            transport.mkdir(folder, mode=0o700)
        except RemoteFileError:
            continue  # another process claimed generation n first
        job_name = f"dagster-alloc-{request.key}"[:100]
        transport.write_many([(f"{folder}/{HOLDER}", render_holder(
            folder=folder, job_name=job_name, directives=request.directives,
            idle_timeout=request.idle_timeout).encode(), 0o700)])
        try:
            out = transport.run(submit_holder_command(folder), timeout=sbatch_timeout + 10, check=False)
        except SSHConnectionError:
            continue  # the job id, if any, is in the folder: read it again
        job = next((line[4:].strip() for line in out.stdout.splitlines() if line.startswith("job:")), "")
        if not job:
            own_failure = out.stdout.strip() or out.stderr.strip() or f"status {out.exit_status}"
            raise ConfigurationError(f"sbatch refused the allocation's holder job: {own_failure}\n"
                                     f"Check {request.describe()} (partition, cpus, mem, time_limit).")
        log(f"Requested allocation {request.key} as Slurm job {job} ({' '.join(f'--{k}={v}' for k, v in sorted(request.directives.items()))}); "
            f"its steps run in it, so its queue wait is paid once. Folder {folder}")
        return Held(folder, job, "PENDING")
    raise DagsterSlurmError(f"Could not find or create allocation {request.key} within {ACQUIRE_BOUND:g} s "
                            f"(folder {request.key_dir}). Nothing was started; re-execute the step.")


def drop_files(*, held: Held, request: AllocationRequest, run_dir: str, name: str, ledger_folder: str,
               record: dict[str, object], lease_dir: str | None) -> list[tuple[str, bytes, int]]:
    """The step's request files: its srun options and the drop script."""
    script = drop_script(run_dir=run_dir, alloc_folder=held.folder, alloc_job_id=held.job_id, name=name,
                         need_seconds=request.need_seconds, ledger=f"{ledger_folder}/{LEDGER}",
                         record_line=ledger_line({**record, "job_id": held.job_id}))
    if lease_dir:
        script += f"touch {shlex.quote(lease_dir)}/{held.job_id} 2>/dev/null; true\n"
    return [(f"{run_dir}/step.opts", "".join(f"{o}\n" for o in request.step_options).encode(), 0o600),
            (f"{run_dir}/step.env", step_environment(request.step_options).encode(), 0o600),
            (f"{run_dir}/drop.sh", script.encode(), 0o600)]


def drop(transport: Transport, held: Held, request: AllocationRequest, run_dir: str, name: str,
         sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Request the step; the allocation's job id, or None when its holder had ended (acquire the next one).
    Exactly once: a lost answer is looked up, never sent again blindly."""
    q = shlex.quote
    try:
        out = transport.run(f"cd {q(run_dir)} && timeout -k 2 {DROP_TIMEOUT} bash drop.sh", check=False,
                            timeout=DROP_TIMEOUT + 15)
    except SSHConnectionError:
        out = None
    if out is not None:
        job, left = parse_drop(out.stdout)
        if job:
            return job
        if out.exit_status == ALLOCATION_ENDED:
            transport.run(f"rmdir {q(run_dir)}/drop 2>/dev/null; true", check=False)  # the guard of that one
            return None
        if out.exit_status == GUARD_TAKEN:
            raise DagsterSlurmError(f"Another orchestrator took over {run_dir} (it found this step's attempt "
                                    "unfinished). Nothing was started by this process; re-execute the step.")
        if out.exit_status == DROP_REFUSED:
            raise ConfigurationError(
                f"Allocation {request.key} (Slurm job {held.job_id}) has {left} s left, and this step asks for "
                f"{request.need_seconds} s (its time_limit): it would be killed mid-way. Nothing was started. Raise "
                f"SlurmAllocation.time_limit, lower the asset's time_limit, or let the allocation end (its holder "
                f"ends when idle) so that the next step gets a fresh one.")
        if out.exit_status == DROP_STUCK:
            raise DagsterSlurmError(f"Allocation {request.key} (job {held.job_id}) did not take requests for 10 s "
                                    f"(its inbox stayed closed); nothing was started. See {held.folder}/holder.log.")
    # the answer is lost (or drop.sh failed): the request exists, or provably not once drop.sh's bound passed
    for _ in range(int((DROP_TIMEOUT + LOST_DROP_MARGIN) / 2) + 1):
        probe = parse_step_probe(transport.run(step_probe_command(run_dir, held.folder, name), check=False,
                                               retry=True).stdout)
        if probe.waiting or probe.taken or probe.step_id:
            return held.job_id
        sleep(2.0)
    raise DagsterSlurmError(f"Could not request this step in allocation {held.job_id} ({run_dir}: "
                            f"{(out.stderr.strip() if out is not None else 'the connection dropped') or 'no answer'}). "
                            "Nothing was started; re-execute the step.")


def wait_started(transport: Transport, held: Held, run_dir: str, name: str, *, log: dg.DagsterLogManager,
                 queue_timeout: float | None, terminate=None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """Block until the step runs and return its id (``<job>.<step>``). Says when the allocation waits in the
    queue, fails when it ends first or srun cannot create the step, and withdraws the request on terminate."""
    started = clock()
    interval, checked, told = 0.03, started, ""
    while True:
        probe = parse_step_probe(transport.run(step_probe_command(run_dir, held.folder, name), check=False,
                                               retry=True).stdout)
        if probe.step_id:
            return probe.step_id
        if probe.launch_failed:
            text = (transport.read_from(f"{run_dir}/launch.log") or b"").decode(errors="replace").strip()
            raise SlurmJobError(f"srun could not start this step in allocation {held.job_id} (status "
                                f"{probe.launch_failed}): {text[-800:] or 'no message'}", held.job_id, "FAILED", "", text)
        if terminate is not None and terminate.requested:
            withdraw(transport, held, run_dir, name)
            log.warning(f"Run terminated: the step's request in allocation {held.job_id} was withdrawn before it "
                        "started.")
            raise dg.DagsterExecutionInterruptedError()
        now = clock()
        if now - checked >= 2.0 or probe.ended:
            checked = now
            state = _alloc_state(transport, held.job_id, sleep)
            if state is None or state in TERMINAL_STATES or probe.ended:
                raise SlurmJobError(f"Allocation {held.job_id} ended ({state or 'gone'}) before this step "
                                    f"started; see {held.folder}/holder.log.", held.job_id, state or "UNKNOWN", "", "")
            if state != told:
                told = state
                log.info(f"Waiting for allocation {held.job_id} ({state}) to start this step"
                         + (" (it waits in the queue once, for all its steps)" if state == "PENDING" else
                            " (the step waits for room inside it)"))
            if state == "PENDING" and queue_timeout is not None and now - started > queue_timeout:
                withdraw(transport, held, run_dir, name)
                raise SlurmJobError(f"Allocation {held.job_id} was still pending after SlurmResource.queue_timeout="
                                    f"{queue_timeout:g} s; this step's request was withdrawn (the allocation stays "
                                    "for other steps and ends itself when idle).", held.job_id, "PENDING", "", "")
        sleep(interval)
        interval = min(interval * 1.3, 0.5 if told != "PENDING" else 1.0)


def withdraw(transport: Transport, held: Held, run_dir: str, name: str) -> None:
    """Take back a request: out of the inbox if it is still there; otherwise the step finds ``cancelled``
    and does not run, or, if it already started, it is cancelled."""
    q = shlex.quote
    transport.run(f"rm -f {q(held.folder)}/inbox/{q(name)}; touch {q(run_dir)}/cancelled; "
                  f"s=$(cat {q(run_dir)}/step_id 2>/dev/null); [ -z \"$s\" ] || scancel \"$s\"; true",
                  check=False, retry=True)


def queue_wait(transport: Transport, held: Held) -> int | None:
    """Seconds the allocation waited in the queue: from its submission to its holder's start (cluster clock;
    sacct may not have the record of a job that started a moment ago)."""
    q = shlex.quote
    words = transport.run(f"cat {q(held.folder)}/submitted {q(held.folder)}/started 2>/dev/null", check=False,
                          retry=True).stdout.split()
    return max(0, int(words[1]) - int(words[0])) if len(words) == 2 and all(w.isdigit() for w in words) else None


def allocation_state(transport: Transport, held: Held, settle: float = 20.0,
                     sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The allocation's state. Once its time limit has passed (``ends_at``, cluster clock) Slurm kills its
    steps before squeue/sacct show the job's own end: wait up to ``settle`` s for that end (TIMEOUT)."""
    state = _alloc_state(transport, held.job_id)
    words = transport.run(f"cat {shlex.quote(held.folder)}/ends_at 2>/dev/null; date +%s", check=False,
                          retry=True).stdout.split()
    if len(words) != 2 or not all(w.isdigit() for w in words) or int(words[1]) < int(words[0]) - 2:
        return state
    deadline = time.monotonic() + settle
    while (state is None or state not in TERMINAL_STATES) and time.monotonic() < deadline:
        sleep(1.0)
        state = _alloc_state(transport, held.job_id)
    return state


def leave(transport: Transport, request: AllocationRequest, user: str, held: Held, run_over: bool) -> None:
    """This step call is done with the allocation; when the run is over, the holder ends as soon as no step
    runs in it and no other step call of the run uses it."""
    transport.run_later(leave_command(request.key_dir, user, held.folder if run_over else None))
