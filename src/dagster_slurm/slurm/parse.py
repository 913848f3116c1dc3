"""Parse sbatch, squeue and sacct output. Pure functions, tested against recorded real output."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from dagster_slurm.errors import DagsterSlurmError

TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
     "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
)

# id, state, reason, start (a pending job's expected start, as Slurm's backfill estimates it; N/A if none).
# Recordings made before the start was asked for have the first three only.
SQUEUE_FORMAT = "%i|%T|%r|%S"
# a job id as squeue and sacct print it: 123, an array task 123_4, or an array's pending rest 123_[5-99%8]
JOB_ID = re.compile(r"^\d+(_\d+|_\[[0-9,%-]+\]|\.\d+)?$")  # a job, an array task, or a step (123.4)


def only_unknown_job_ids(errors: list[str]) -> bool:
    """squeue/sacct errors that only say the jobs asked for are unknown (ended and purged): no failure."""
    return bool(errors) and all("Invalid job id specified" in e for e in errors)
# what one sacct call per job end asks for (job lines and step lines); recordings made before Submit..TimelimitRaw
# were added carry the shorter list in their header and are parsed with it (``parse_sacct(fields=...)``)
GPU_FIELDS = ("AllocTRES", "TRESUsageInAve")  # GPUs allocated (gres/gpu) and, where gathered, their use (gres/gpuutil)
SACCT_FIELDS = ("JobID,State,ExitCode,Elapsed,ElapsedRaw,TotalCPU,MaxRSS,NCPUS,NNodes,Partition,NodeList,"
                "Submit,Start,ReqMem,TimelimitRaw," + ",".join(GPU_FIELDS))


def config_value(scontrol_config: str, key: str) -> str | None:
    """One ``Key = value`` line of ``scontrol show config``."""
    m = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.*?)\s*$", scontrol_config, re.M)
    return m.group(1) if m else None


def parse_sbatch_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = text.split(";")[0].strip()
    if not job_id.isdigit():
        raise DagsterSlurmError(f"sbatch --parsable printed no job id: {stdout!r}")
    return job_id


# sbatch failures worth retrying: the controller is busy or unreachable, so the job was certainly not
# submitted (Slurm's own wording). "Socket timed out" is not here: the job may have been submitted.
_TRANSIENT_SBATCH = (
    "Resource temporarily unavailable",
    "Unable to contact slurm controller",
    "Slurm backup controller in standby mode",
    "Job submit/allocate failed: Unspecified error",
)


def is_transient_sbatch_error(stderr: str) -> bool:
    """True when sbatch failed for a reason that a later attempt may not meet (busy controller)."""
    return any(marker.lower() in stderr.lower() for marker in _TRANSIENT_SBATCH)


def submit_limit_hint(stderr: str) -> str:
    """What to do when sbatch refused a job for the site's limit on queued jobs (array tasks count)."""
    if "MaxSubmitJob" in stderr or "MaxSubmit" in stderr or "MaxJobCount" in stderr:
        return ("\nThe site limits how many jobs you may have queued (MaxSubmitJobs; each array task counts). "
                "Backfill fewer partitions per run (BackfillPolicy.multi_run(max_partitions_per_run=N)), set "
                "SlurmResource.max_array_size lower, or wait for queued jobs to finish.")
    return ""


# Pending reasons that cannot resolve on their own: the request exceeds what the partition, account or
# QOS allows for one job. Each maps to the setting to change.
_UNRESOLVABLE_REASONS = {
    "PartitionConfig": "the request (cpus, mem, gpus_per_node, num_nodes) exceeds what the partition offers",
    "PartitionNodeLimit": "num_nodes is outside the partition's node limits",
    "PartitionTimeLimit": "time_limit exceeds the partition's maximum",
    "BadConstraints": "the constraints (extra_sbatch_options constraint/gres) match no node",
    "InvalidAccount": "account is not valid for this user",
    "InvalidQOS": "qos is not valid for this user or partition",
    "QOSMaxWallDurationPerJobLimit": "time_limit exceeds the QOS's maximum",
    "AssocMaxWallDurationPerJobLimit": "time_limit exceeds the account's maximum",
    "QOSMaxCpuPerJobLimit": "cpus exceed the QOS's per-job maximum",
    "AssocMaxCpuPerJobLimit": "cpus exceed the account's per-job maximum",
    "QOSMaxNodePerJobLimit": "num_nodes exceeds the QOS's per-job maximum",
    "AssocMaxNodePerJobLimit": "num_nodes exceeds the account's per-job maximum",
    "QOSMaxMemoryPerJob": "mem exceeds the QOS's per-job maximum",
    "QOSMinCpuNotSatisfied": "cpus are below the QOS's minimum",
    "DependencyNeverSatisfied": "a job dependency can never be satisfied",
}


# A request no node can satisfy (more CPUs per node than any node has): 22.05 and 26.05 queue it, pending for
# PartitionConfig (handled here); 24.11 refuses it at submission ("sbatch: error: CPU count per node can not be
# satisfied"), which the submit path reports as "sbatch rejected the job" with the request. So does 24.11 a job
# asking for more nodes than the partition has, which 22.05 and 26.05 leave pending for PartitionNodeLimit
# (recorded: tests/data/slurm/releases/*/squeue_pending_reasons.txt, 24.11/sbatch_refused_pend-*.json).
def unresolvable_reason(reason: str) -> str | None:
    """Why a job pending for ``reason`` can never start (which setting to change), or None."""
    return _UNRESOLVABLE_REASONS.get(reason.split(",")[0].strip())


def active_jobs_script(ids_expr: str) -> str:
    """Shell lines printing ``ACTIVE|<squeue exit status>|<ids and errors, comma-separated>`` for the
    jobs in the comma-separated list ``ids_expr`` (any user's); see :func:`parse_active`."""
    return "\n".join([
        f"ids={ids_expr}",
        "if [ -n \"$ids\" ]; then out=$(squeue -h -o %i -j \"$ids\" 2>&1); rc=$?; else out=; rc=0; fi",
        "printf 'ACTIVE|%s|%s\\n' \"$rc\" \"$(printf '%s' \"$out\" | tr '\\n' ,)\"",
    ])


def parse_active(rest: str) -> tuple[set[str], str | None]:
    """(queued or running job ids, squeue's error or None) from the text after ``ACTIVE|``. A failed
    squeue is never read as "no job is active"; "Invalid job id" (all of them ended) is no failure."""
    rc, _, text = rest.partition("|")
    items = re.findall(r"\d+_\[[^\]]*\]|[^,]+", text)  # an array's pending rest may hold commas: 9_[3,7-8]
    listed = {i for i in items if JOB_ID.match(i)}
    errors = [i for i in items if i not in listed]
    active = listed | {i.split("_", 1)[0] for i in listed}  # an array is active while one of its tasks is
    if rc != "0" and not only_unknown_job_ids(errors):
        return active, " ".join(errors) or f"exit status {rc}"
    return active, None


def normalise_state(raw: str) -> str:
    """``CANCELLED by 1000`` -> ``CANCELLED``; ``COMPLETED+`` -> ``COMPLETED``."""
    return raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    state: str
    reason: str  # "" when squeue gave none (%r prints None, or (null))
    start: str = ""  # a timestamp (cluster time), or "" when squeue gave none (N/A, Unknown)


NO_REASON = ("None", "(null)")


def parse_squeue(stdout: str) -> dict[str, QueueEntry]:
    """Lines of ``squeue -h -t all -o '%i|%T|%r|%S'`` (or without the start)."""
    out: dict[str, QueueEntry] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            start = parts[3] if len(parts) > 3 and parse_timestamp(parts[3]) is not None else ""
            reason = parts[2] if len(parts) > 2 and parts[2] not in NO_REASON else ""
            out[parts[0]] = QueueEntry(parts[0], normalise_state(parts[1]), reason, start)
    return out


@dataclass(frozen=True)
class JobAccounting:
    """Final state and usage of one job, from sacct (job line and its steps)."""

    job_id: str
    state: str
    exit_code: str  # "code:signal"
    elapsed: str = ""
    elapsed_seconds: int = 0
    total_cpu_seconds: float = 0.0
    max_rss_bytes: int | None = None
    ncpus: int = 0
    nnodes: int = 0
    partition: str = ""
    nodelist: str = ""
    queue_wait_seconds: int | None = None  # Submit -> Start; None while pending or when never started
    requested_mem_bytes: int | None = None  # for the whole job (a per-CPU request times the CPUs)
    time_limit_seconds: int | None = None  # None: no limit (UNLIMITED) or not recorded
    gpus: int | None = None  # GPUs allocated (AllocTRES gres/gpu); None: none, or the cluster does not account them
    gpu_util_percent: float | None = None  # mean GPU use of the busiest step (TRESUsageInAve gres/gpuutil), if recorded
    accounted: bool = True  # False: state from squeue, no metrics (why: ``unaccounted_why``)
    unaccounted_why: str = "sacct failed"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def node_hours(self) -> float:
        return self.elapsed_seconds * max(self.nnodes, 1) / 3600.0

    @property
    def cpu_efficiency(self) -> float | None:
        cpu_time = self.elapsed_seconds * self.ncpus
        return min(self.total_cpu_seconds / cpu_time, 1.0) if cpu_time > 0 else None

    def metadata(self, requested: Mapping[str, str] | None = None) -> dict[str, object]:
        """Dagster metadata: one value per quantity, numbers as numbers (they plot over time in the UI).

        slurmdbd completes a job's row only ~1.5 s after the job ended (recorded: Partition empty, ReqMem
        ``16?``, TimelimitRaw empty right after the end), so missing values fall back to what the job asked
        for (``requested``: its sbatch directives); a partition it did not ask for (the cluster's
        default) is then left out."""
        requested = requested or {}
        if not self.accounted:
            return {"slurm_job_id": self.job_id, "slurm_state": self.state,
                    "slurm_accounting": f"unavailable ({self.unaccounted_why}): no metrics"}
        limit = self.time_limit_seconds or parse_time_limit(requested.get("time", ""))
        mem = self.requested_mem_bytes or _requested_mem(requested, self.ncpus)
        meta: dict[str, object] = {
            "slurm_job_id": self.job_id,
            "slurm_state": self.state,
            "slurm_exit_code": self.exit_code,
            "slurm_elapsed_seconds": self.elapsed_seconds,
        }
        if self.queue_wait_seconds is not None:
            meta["slurm_queue_wait_seconds"] = self.queue_wait_seconds
        if limit is not None:
            meta["slurm_time_limit_seconds"] = limit
        meta["slurm_node_hours"] = significant(self.node_hours)
        meta["slurm_cpus"] = self.ncpus
        if self.cpu_efficiency is not None:
            meta["slurm_cpu_efficiency_percent"] = round(100 * self.cpu_efficiency, 1)
        if self.max_rss_bytes is not None:
            meta["slurm_max_rss_mb"] = round(self.max_rss_bytes / 2**20, 1)
        if mem is not None:
            meta["slurm_requested_mem_mb"] = round(mem / 2**20, 1)
        partition = self.partition or requested.get("partition")
        if partition:
            meta["slurm_partition"] = partition
        meta["slurm_nodes"] = self.nodelist
        if self.gpus:
            meta["slurm_gpus"] = self.gpus
        if self.gpu_util_percent is not None:
            meta["slurm_gpu_utilization_percent"] = round(self.gpu_util_percent, 1)
        return meta


def parse_time_limit(text: str) -> int | None:
    """sbatch ``--time`` in seconds: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``;
    ``UNLIMITED``/``INFINITE``/empty -> None."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", text or "")
    if not m:
        return None
    days, a, b, c = m.groups()
    first, second, third = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + first * 3600 + second * 60 + third
    if c is not None:  # HH:MM:SS
        return first * 3600 + second * 60 + third
    return first * 60 + second  # MM[:SS]


def parse_mem_request(text: str) -> int | None:
    """sbatch ``--mem``/``--mem-per-cpu`` in bytes: ``4G``, ``512M``, ``100K``, ``1T``; a bare number is MB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text or "", re.I)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "M").upper()])


def _requested_mem(directives: Mapping[str, str], ncpus: int) -> int | None:
    if directives.get("mem"):
        return parse_mem_request(directives["mem"])
    per_cpu = parse_mem_request(directives.get("mem-per-cpu", ""))
    return per_cpu * max(ncpus, 1) if per_cpu else None


def significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: a 2 s job's node-hours stay 0.000556, never 0."""
    return float(f"{value:.{digits}g}")


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def parse_size(text: str) -> int | None:
    """sacct sizes: ``1234K``, ``3.5M``, ``0``; empty -> None."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)\s*", text or "")
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def parse_duration(text: str) -> float:
    """sacct durations: ``[D-]HH:MM:SS[.mmm]``, ``MM:SS.mmm``, ``SS.mmm``."""
    text = (text or "").strip()
    if not text or text in ("INVALID", "UNLIMITED"):
        return 0.0
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return days * 86400 + seconds


def parse_timestamp(text: str) -> float | None:
    """sacct's ``2026-12-04T13:53:35`` (the cluster's local time) -> seconds; ``Unknown``/``None`` -> None.
    Only differences of two such values are meaningful (both in the cluster's time zone)."""
    try:
        return float(calendar.timegm(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def parse_requested_mem(text: str, ncpus: int, nnodes: int) -> int | None:
    """sacct ReqMem: ``32M`` (22.05+, for the job), or the older ``32Mn`` (per node) / ``32Mc`` (per CPU)."""
    text = (text or "").strip()
    per = text[-1:] if text[-1:] in ("n", "c") else ""
    size = parse_size(text[:-1] if per else text)
    if size is None or size == 0:
        return None
    return size * (max(ncpus, 1) if per == "c" else max(nnodes, 1) if per == "n" else 1)


def hostlist_size(text: str) -> int:
    """How many hosts a Slurm host list names: ``n[1-3,7],gpu2`` -> 5; ``None assigned`` -> 0."""
    if not text or text.startswith("None"):
        return 0
    count = 0
    for name in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", text):
        ranges = re.search(r"\[([^\]]*)\]", name)
        if not ranges:
            count += 1
            continue
        for part in ranges.group(1).split(","):
            low, _, high = part.partition("-")
            count += int(high) - int(low) + 1 if high.isdigit() and low.isdigit() else 1
    return count


def tres_value(tres: str, name: str) -> float | None:
    """One entry of a TRES list (``billing=2,cpu=2,gres/gpu=2,mem=256M,node=1``) as a number; typed GPUs
    (``gres/gpu:a100=2``) count towards ``gres/gpu`` when no untyped entry is given. Sizes (``256M``) are not
    asked for here. Slurm puts the untyped total first from 21.08 on (22.05, 24.11 and 26.05 alike)."""
    total = None
    typed = 0.0
    for item in (tres or "").split(","):
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            continue
        if key == name:
            total = number
        elif key.startswith(name + ":"):
            typed += number
    return total if total is not None else (typed or None)


def parse_sacct(stdout: str, fields: str = SACCT_FIELDS, steps: Collection[str] = ()) -> dict[str, JobAccounting]:
    """``sacct -P -n -o <fields>`` (job lines and step lines) -> one record per job. ``steps``: step ids
    (``123.4``, a step of a shared allocation) that get a record of their own, from their own line."""
    names = fields.split(",")
    # rows of all the fields asked for; also rows without the trailing GPU fields (recordings made before they were
    # asked for: sacct itself always answers with every field asked, or fails)
    counts = {len(names)} | ({len(names) - len(GPU_FIELDS)} if names[-len(GPU_FIELDS):] == list(GPU_FIELDS) else set())
    rows = [dict(zip(names, line.split("|"), strict=False)) for line in stdout.splitlines() if line.count("|") + 1 in counts]
    jobs: dict[str, JobAccounting] = {}
    max_rss: dict[str, int] = {}
    gpu_util: dict[str, float] = {}
    widest: dict[str, tuple[int, str]] = {}  # per job: the node list of its row (job or step) with most nodes
    for row in rows:
        job_id, _, step = row["JobID"].partition(".")
        if row["JobID"] in steps:
            job_id, step = row["JobID"], ""
        rss = parse_size(row["MaxRSS"])
        if rss is not None:
            max_rss[job_id] = max(max_rss.get(job_id, 0), rss)
        util = tres_value(row.get("TRESUsageInAve", ""), "gres/gpuutil")  # only where a GPU plugin gathers it
        if util is not None:
            gpu_util[job_id] = max(gpu_util.get(job_id, 0.0), util)
        nodes = hostlist_size(row["NodeList"])
        if row["NodeList"] and (job_id not in widest or nodes > widest[job_id][0]):  # ties: the job's own row
            widest[job_id] = (nodes, row["NodeList"])
        if step:
            continue
        submit, start = parse_timestamp(row.get("Submit", "")), parse_timestamp(row.get("Start", ""))
        limit = row.get("TimelimitRaw", "")
        ncpus, nnodes = int(row["NCPUS"] or 0), int(row["NNodes"] or 0)
        jobs[job_id] = JobAccounting(
            job_id=job_id,
            state=normalise_state(row["State"]),
            exit_code=row["ExitCode"],
            elapsed=row["Elapsed"],
            elapsed_seconds=int(row["ElapsedRaw"] or 0),
            total_cpu_seconds=parse_duration(row["TotalCPU"]),
            ncpus=ncpus,
            nnodes=nnodes,
            partition=row["Partition"],
            nodelist=row["NodeList"],
            queue_wait_seconds=int(start - submit) if submit is not None and start is not None else None,
            requested_mem_bytes=parse_requested_mem(row.get("ReqMem", ""), ncpus, nnodes),
            time_limit_seconds=int(limit) * 60 if limit.isdigit() else None,
            gpus=int(tres_value(row.get("AllocTRES", ""), "gres/gpu") or 0) or None,
        )
    # right after a multi-node job's end its own row names only the first node for a few seconds (recorded):
    # the srun step that ran on all of them has the whole list
    return {
        job_id: JobAccounting(**{**acct.__dict__, "max_rss_bytes": max_rss.get(job_id),
                                 "nodelist": widest.get(job_id, (0, acct.nodelist))[1],
                                 "gpu_util_percent": gpu_util.get(job_id)})
        for job_id, acct in jobs.items()
    }
