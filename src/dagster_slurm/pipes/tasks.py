"""Many payload runs in one step (array tasks): each task's own Pipes context, its messages, its outcome,
and what Dagster records for them. Shared by Slurm job arrays and local mode.

A partition range gives one task per partition (the task's context carries its partition key); a
fan-out (``compute.map``) gives one task per item (the item is the task's extra ``item``). Each task's
messages go through a Pipes message handler of its own, so its materialization metadata and check
results stay its own; its log lines reach Dagster prefixed with the task's label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg
from dagster import PipesContextInjector, PipesExecutionResult, PipesMessageHandler, PipesMessageReader
from dagster_pipes import PIPES_PROTOCOL_VERSION, PIPES_PROTOCOL_VERSION_FIELD, PipesContextData, PipesParams

from dagster_slurm.errors import SlurmJobError
from dagster_slurm.pipes.failure import closed_exception, exception_line, exit_text, tasks_stderr_metadata
from dagster_slurm.pipes.reader import OneWriter

log = logging.getLogger("dagster_slurm.pipes")

Kind = Literal["partitions", "items"]


@dataclass(frozen=True)
class Task:
    index: int  # 0..N-1 within this compute call
    label: str  # the partition key, or "item <i>"
    context: Mapping[str, Any]  # its Pipes context data (JSON)


@dataclass
class TaskOutcome:
    task: Task
    state: str  # Slurm's (or local mode's) final state: COMPLETED, FAILED, CANCELLED, ...
    job_id: str = ""  # "123_7" on Slurm, "" locally
    exit_code: int | None = None  # the payload's
    opened: bool = False
    results: list[PipesExecutionResult] = field(default_factory=list)
    stderr_tail: str = ""
    exception: str | None = None  # the exception line the task's Pipes "closed" message reported
    metadata: dict[str, Any] = field(default_factory=dict)  # Slurm accounting of the task
    reused: bool = False  # done by an earlier run of this step; not run again

    @property
    def ok(self) -> bool:
        return self.reused or (self.state == "COMPLETED" and self.exit_code in (0, None) and self.opened)

    def materialization_metadata(self, asset_key: dg.AssetKey) -> dict[str, Any]:
        reported: dict[str, Any] = {}
        for r in self.results:
            if isinstance(r, dg.MaterializeResult) and r.asset_key in (asset_key, None):
                reported.update(r.metadata or {})
        return {**reported, **self.metadata}


class CapturedContext(PipesContextInjector):
    """Keeps the step's Pipes context data: each task gets a variant of it."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        self.data = dict(context_data)
        yield {}

    def no_messages_debug_text(self) -> str:
        return "Each task had a Pipes context of its own."


class TaskMessagesReader(OneWriter, PipesMessageReader):
    """The session's reader: messages arrive per task (see :class:`TaskMessages`), not through it."""

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        yield {}

    def no_messages_debug_text(self) -> str:
        return "Each task wrote its Pipes messages to a file of its own."


class TaskMessages:
    """One task's Pipes messages: a handler of its own; log lines prefixed with the task's label."""

    def __init__(self, context, reader: PipesMessageReader, label: str):
        self.handler = PipesMessageHandler(context, reader)
        self.label = label
        self.opened = False
        self.exception: str | None = None

    def line(self, raw: bytes | str) -> None:
        if not raw.strip():
            return
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("[%s] skipping a malformed Pipes message line: %r", self.label, raw[:200])
            return
        method = message.get("method")
        if method == "opened":  # one "opened" line for the whole step, not one per task
            self.opened = True
            return
        if method == "log" and isinstance(message.get("params"), dict):
            params = dict(message["params"])
            params["message"] = f"[{self.label}] {params.get('message', '')}"
            message = {**message, "params": params}
        self.exception = self.exception or closed_exception(message)
        self.handler.handle_message(message)

    def results(self) -> list[PipesExecutionResult]:
        return list(self.handler.get_reported_results())


def close_session(session, outcomes: Sequence[TaskOutcome]) -> None:
    """The step's own Pipes session hears one "opened" and "closed" when any task opened Pipes (so
    Dagster does not warn that no messages arrived; the tasks' messages went to their own handlers)."""
    if any(o.opened for o in outcomes):
        for method in ("opened", "closed"):
            session.message_handler.handle_message(
                {PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": method, "params": {}})


def task_contexts(context, base: Mapping[str, Any], kind: Kind, keys_or_items: Sequence[Any],
                  extras: Mapping[str, Any] | None) -> list[Task]:
    """Each task's variant of the step's Pipes context: its own partition key (and time window), or its
    item as the extra ``item`` (with ``item_index``)."""
    tasks = []
    if kind == "partitions":
        window = _time_windows(context)
        for i, key in enumerate(keys_or_items):
            data = {**base, "partition_key": key, "partition_key_range": {"start": key, "end": key},
                    "partition_time_window": window(key)}
            tasks.append(Task(i, str(key), data))
    else:
        for i, item in enumerate(keys_or_items):
            data = {**base, "extras": {**(extras or {}), "item": item, "item_index": i}}
            tasks.append(Task(i, f"item {i}", data))
    return tasks


def _time_windows(context):
    partitions_def = context.assets_def.partitions_def if context.has_assets_def else None
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        def window(key: str):
            tw = partitions_def.time_window_for_partition_key(key)
            return {"start": tw.start.isoformat(), "end": tw.end.isoformat()}
        return window
    return lambda _key: None


def step_partition_keys(context) -> list[str] | None:
    """The partition keys of a step that runs a range of more than one partition, else None."""
    if not context.has_partition_key_range:
        return None
    keys = list(context.partition_keys)
    return keys if len(keys) > 1 else None


def finish(context, kind: Kind, outcomes: Sequence[TaskOutcome], summary: Mapping[str, Any]) -> ArrayInvocation:
    """Each partition's materialization gets its own task's metadata; a failed task fails the step."""
    what = "partitions" if kind == "partitions" else "items"
    if not all(o.ok for o in outcomes):
        record_successes_and_raise(context, kind, outcomes, what)
    if kind == "partitions" and context.has_assets_def:
        for o in outcomes:
            for key in context.selected_asset_keys:
                context.add_asset_metadata(o.materialization_metadata(key), asset_key=key, partition_key=o.task.label)
    done = sum(1 for o in outcomes if o.ok)
    return ArrayInvocation(context, kind, outcomes, {**summary, f"{what}_succeeded": done,
                                                     f"{what}_total": len(outcomes)})


class ArrayInvocation:
    """What ``compute.run`` over a partition range or ``compute.map`` returns: ``get_results()`` for the
    asset to return, ``outcomes`` per task (items' reported metadata and results)."""

    def __init__(self, context, kind: Kind, outcomes: Sequence[TaskOutcome], metadata: Mapping[str, Any]):
        self.context = context
        self.kind = kind
        self.outcomes = list(outcomes)
        self.metadata = dict(metadata)

    def get_results(self) -> tuple[PipesExecutionResult, ...]:
        keys = list(self.context.selected_asset_keys) if self.context.has_assets_def else []
        results: list[PipesExecutionResult] = []
        summary = dict(self.metadata)
        if self.kind == "items":
            summary["items"] = dg.MetadataValue.json([_item_record(o, keys) for o in self.outcomes])
        results += [dg.MaterializeResult(asset_key=key, metadata=summary) for key in keys]
        results += combined_checks(self.outcomes)
        return tuple(results)  # as Dagster's own get_results: a tuple is a step's several results

    def get_asset_check_result(self) -> dg.AssetCheckResult:
        checks = combined_checks(self.outcomes)
        if len(checks) != 1:
            raise SlurmJobError(f"Expected one asset check result from the tasks, got {len(checks)}.",
                                "", "", "", "")
        return checks[0]


def _item_record(outcome: TaskOutcome, keys: Sequence[dg.AssetKey]) -> dict[str, Any]:
    reported = {}
    for key in list(keys) or [None]:  # type: ignore[list-item]
        for r in outcome.results:
            if isinstance(r, dg.MaterializeResult) and r.asset_key in (key, None):
                reported.update({k: getattr(v, "value", v) for k, v in (r.metadata or {}).items()})
    record = {"item_index": outcome.task.index, "state": outcome.state, "job_id": outcome.job_id,
              "metadata": reported}
    return json.loads(json.dumps(record, default=str))


def combined_checks(outcomes: Sequence[TaskOutcome]) -> list[dg.AssetCheckResult]:
    """One result per (asset, check) over all tasks: it passes when every task's passed; the labels of
    the tasks whose check failed are in its metadata (a check result has no partition of its own)."""
    by_check: dict[tuple, list[tuple[TaskOutcome, dg.AssetCheckResult]]] = {}
    for o in outcomes:
        for r in o.results:
            if isinstance(r, dg.AssetCheckResult):
                by_check.setdefault((r.asset_key, r.check_name), []).append((o, r))
    combined = []
    for (asset_key, check_name), pairs in by_check.items():
        if len(pairs) == 1 and len(outcomes) == 1:
            combined.append(pairs[0][1])
            continue
        failed = [o.task.label for o, r in pairs if not r.passed]
        severity = next((r.severity for _o, r in pairs if not r.passed), pairs[0][1].severity)
        combined.append(dg.AssetCheckResult(
            asset_key=asset_key, check_name=check_name, passed=not failed, severity=severity,
            metadata={"tasks_checked": len(pairs), "tasks_failed": len(failed),
                      "failed": dg.MetadataValue.json(failed)}))
    return combined


def record_successes_and_raise(context, kind: Kind, outcomes: Sequence[TaskOutcome], what: str) -> None:
    """Some tasks failed: the partitions that succeeded are recorded as materialized now (the step
    fails, so Dagster would record none of them), then the step fails naming each failed task."""
    failed = [o for o in outcomes if not o.ok]
    if kind == "partitions" and context.has_assets_def:
        for o in outcomes:
            if o.ok and not o.reused:
                for key in context.selected_asset_keys:
                    context.log_event(dg.AssetMaterialization(asset_key=key, partition=o.task.label,
                                                              metadata=o.materialization_metadata(key)))
    lines = [f"{len(failed)} of {len(outcomes)} {what} failed: "
             + ", ".join(o.task.label for o in failed[:20]) + (" ..." if len(failed) > 20 else "")]
    for o in failed[:10]:
        why = (exit_text("", o.exit_code) if o.exit_code else o.state) + ("" if o.opened or o.exit_code
                                                                         else ", Pipes never opened")
        headline = exception_line(o.exception, o.stderr_tail)
        lines.append(f"- {o.task.label} (job {o.job_id or 'local'}, {why})" + (f": {headline}" if headline else ""))
    if kind == "partitions":
        lines.append("The other partitions are recorded as materialized; re-execute the step to run only the "
                     "failed ones.")
    if any(o.stderr_tail for o in failed):
        lines.append("The failed tasks' stderr tails are in this failure's metadata.")
    raise SlurmJobError("\n".join(lines), failed[0].job_id, failed[0].state, str(failed[0].exit_code or ""),
                        failed[0].stderr_tail,
                        {f"failed_{what}": dg.MetadataValue.json([o.task.label for o in failed]),
                         f"{what}_succeeded": sum(1 for o in outcomes if o.ok), f"{what}_total": len(outcomes),
                         **tasks_stderr_metadata([(o.task.label, o.stderr_tail) for o in failed[:10]])})
