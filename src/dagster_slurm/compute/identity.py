"""Which job a ``compute.run`` call is: its identity (what should reattach) and fingerprint (what it runs).

The identity is stable across everything that should find the same Slurm job again: a re-execution
or run retry (new run id, same root run id), a step retry, a restarted orchestrator. It differs for
everything that should not: another run, step, partition, or another ``compute.run`` call in the same
step. The fingerprint says whether the job would run the same thing (payload, extras, environment,
Slurm request); a different fingerprint never reattaches.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from dagster_slurm.compute.context import step_key

READABLE_CHARS = 60  # of the step key in folder and job names; the hash keeps them apart


@dataclass(frozen=True)
class StepCall:
    """One ``compute.run`` call of one step attempt."""

    root_run_id: str
    run_id: str
    step_key: str
    partition: str  # partition key, "start..end" for a range, "" when unpartitioned
    retry: int
    ordinal: int  # 0 for the first compute.run call of this step attempt, 1 for the second, ...

    @property
    def identity(self) -> str:
        """sha256 of everything that names the job (full step key: nothing is cut before hashing)."""
        text = json.dumps([self.root_run_id, self.step_key, self.partition, self.ordinal])
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def readable(self) -> str:
        """A short human-readable label (step, partition, call) for folder and job names."""
        parts = [self.step_key, self.partition, f"c{self.ordinal}" if self.ordinal else ""]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p))[:READABLE_CHARS] or "step"


class CallCounter:
    """Numbers the ``compute.run`` calls of each step attempt in this process (bounded memory)."""

    def __init__(self, keep: int = 4096):
        self._counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def next(self, run_id: str, step_key: str, retry: int) -> int:
        key = (run_id, step_key, retry)
        with self._lock:
            ordinal = self._counts.pop(key, -1) + 1
            self._counts[key] = ordinal
            while len(self._counts) > self._keep:
                self._counts.popitem(last=False)
            return ordinal


CALLS = CallCounter()


def step_call(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> StepCall:
    """Identify this ``compute.run`` call (counts it: call once per ``compute.run``)."""
    key = step_key(context)
    if context.has_partition_key:
        partition = context.partition_key
    elif context.has_partition_key_range:
        keys = context.partition_key_range
        partition = f"{keys.start}..{keys.end}"
    else:
        partition = ""
    run = context.run
    ordinal = CALLS.next(context.run_id, key, context.retry_number)
    return StepCall(run.root_run_id or context.run_id, context.run_id, key, partition,
                    context.retry_number, ordinal)


def fingerprint(*, payload: bytes, command: Sequence[str], directives: Mapping[str, str], env_path: str,
                extras: Mapping[str, Any] | None, extra_env: Mapping[str, str] | None) -> str:
    """sha256 of what the job would run. Secrets in ``extra_env`` only enter hashed."""
    digest = hashlib.sha256()
    for part in (
        hashlib.sha256(payload).hexdigest(),
        json.dumps(list(command)),
        json.dumps(dict(sorted(directives.items()))),
        env_path,
        json.dumps(extras or {}, sort_keys=True, default=repr),
        json.dumps(sorted((extra_env or {}).items())),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
