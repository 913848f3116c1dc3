"""Whether a Dagster run has a step left, from its execution plan and its event log (public instance API)."""

from __future__ import annotations

import dagster as dg

from dagster_slurm.compute.context import step_key

_STARTED_OR_ENDED = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                     dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_SKIPPED)


def run_has_no_step_left(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> bool:
    """True when every step of the run other than this one has started or ended: no step of the run will
    ask for its allocation after the ones that use it now (they are counted on the cluster)."""
    instance = context.instance
    run = instance.get_run_by_id(context.run_id)
    if run is None or not run.execution_plan_snapshot_id:
        return False
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    keys = {step.key for step in plan.steps}
    if run.step_keys_to_execute:
        keys &= set(run.step_keys_to_execute)
    keys.discard(step_key(context))
    for event_type in _STARTED_OR_ENDED:
        if not keys:
            break
        records = instance.get_records_for_run(context.run_id, of_type=event_type, limit=10000).records
        keys -= {r.event_log_entry.dagster_event.step_key for r in records if r.event_log_entry.dagster_event}
    return not keys
