"""Job arrays: the ``--array`` spec, chunking to the site's MaxArraySize, and array ids as Slurm prints
them (``123_4`` for a task, ``123_[5-99%8]`` for its pending rest). Pure functions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster_slurm.slurm.parse import TERMINAL_STATES, JobAccounting, config_value

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default: task ids 0..1000
TASK_ID = re.compile(r"^(\d+)_(\d+)$")


def base_job_id(job_id: str) -> str:
    """``123_4`` / ``123_[5-9%2]`` / ``123`` -> ``123``."""
    return job_id.split("_", 1)[0]


def belongs_to(listed: str, job_id: str) -> bool:
    """Whether a squeue/sacct id is ``job_id`` itself or one of its array tasks."""
    return listed == job_id or (listed.startswith(job_id + "_") and "_" not in job_id)


def array_spec(indices: Iterable[int], max_concurrent: int | None = None) -> str:
    """``--array`` value for these task ids: runs joined (``0-19``, ``3,7,9-11``), ``%K`` throttle."""
    ids = sorted(set(indices))
    if not ids:
        raise ValueError("an array needs at least one task")
    parts: list[str] = []
    start = prev = ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    spec = ",".join(parts)
    return f"{spec}%{max_concurrent}" if max_concurrent else spec


def expand_spec(spec: str) -> list[int]:
    """Task ids of an ``--array`` spec (``0-3,7%2`` -> 0, 1, 2, 3, 7); steps (``0-9:2``) included."""
    ids: list[int] = []
    for part in spec.split("%", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return sorted(set(ids))


def spec_of_script(script: str) -> str | None:
    """The ``--array`` spec a rendered job script carries."""
    m = re.search(r"^#SBATCH --array=(\S+)$", script, re.M)
    return m.group(1).strip("'") if m else None


def chunk_ranges(count: int, max_array_size: int) -> list[range]:
    """Split ``count`` tasks into arrays whose task ids stay below ``max_array_size`` (each array
    numbers its tasks from 0)."""
    size = max(1, max_array_size)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def parse_max_array_size(scontrol_config: str) -> int:
    """``MaxArraySize = N`` from ``scontrol show config``; Slurm's default when absent."""
    value = config_value(scontrol_config, "MaxArraySize")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def task_accounting(jobs: Mapping[str, JobAccounting], job_id: str) -> dict[int, JobAccounting]:
    """Per task id, the accounting of array ``job_id``'s tasks (``parse_sacct`` of ``sacct -j job_id``)."""
    out: dict[int, JobAccounting] = {}
    for listed, acct in jobs.items():
        m = TASK_ID.match(listed)
        if m and m.group(1) == job_id:
            out[int(m.group(2))] = acct
    return out


def overall_state(states: Sequence[str]) -> str:
    """One state for a whole array: RUNNING while a task runs, PENDING while only pending tasks are
    left, COMPLETED when all completed, else the first other terminal state (e.g. FAILED)."""
    active = [s for s in states if s not in TERMINAL_STATES]
    if active:
        return "RUNNING" if "RUNNING" in active else active[0]
    failed = [s for s in states if s != "COMPLETED"]
    return failed[0] if failed else ("COMPLETED" if states else "UNKNOWN")


def aggregate(job_id: str, tasks: Mapping[Any, JobAccounting]) -> JobAccounting:
    """The array as one job: overall state, the longest task's elapsed time, summed CPU time, the first
    task's queue wait."""
    accts = list(tasks.values())
    state = overall_state([a.state for a in accts])
    worst = next((a for a in accts if a.state == state), accts[0]) if accts else None
    longest = max(accts, key=lambda a: a.elapsed_seconds) if accts else None
    return JobAccounting(
        job_id=job_id, state=state, exit_code=worst.exit_code if worst else "",
        elapsed=longest.elapsed if longest else "", elapsed_seconds=longest.elapsed_seconds if longest else 0,
        total_cpu_seconds=sum(a.total_cpu_seconds for a in accts),
        max_rss_bytes=max((a.max_rss_bytes for a in accts if a.max_rss_bytes is not None), default=None),
        ncpus=max((a.ncpus for a in accts), default=0), nnodes=max((a.nnodes for a in accts), default=0),
        partition=accts[0].partition if accts else "", nodelist=",".join(sorted({a.nodelist for a in accts})),
        queue_wait_seconds=min((a.queue_wait_seconds for a in accts if a.queue_wait_seconds is not None), default=None),
        requested_mem_bytes=accts[0].requested_mem_bytes if accts else None,
        time_limit_seconds=accts[0].time_limit_seconds if accts else None,
    )
