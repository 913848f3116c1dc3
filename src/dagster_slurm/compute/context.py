"""What the compute layer reads off a Dagster execution context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

AnyContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext


def op_context(context: AnyContext) -> dg.AssetExecutionContext | dg.OpExecutionContext:
    """The context the rest of the library works with: an asset check's context wraps an op context
    (it has no assets_def, partition or step accessors of its own)."""
    if isinstance(context, dg.AssetCheckExecutionContext):
        return context.op_execution_context
    if not isinstance(context, (dg.AssetExecutionContext, dg.OpExecutionContext)):
        raise TypeError(f"compute.run(context=...) needs the asset's, op's or asset check's execution context; "
                        f"got {type(context).__name__}.")
    return context


def asset_metadata(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> Mapping[str, Any]:
    """Definition metadata of the asset(s) this step materialises (first asset wins per key)."""
    if not context.has_assets_def:
        return {}
    specs = {spec.key: spec for spec in context.assets_def.specs}
    merged: dict[str, Any] = {}
    for key in reversed(list(context.selected_asset_keys)):
        spec = specs.get(key)
        if spec is not None:
            merged.update({k: _raw(v) for k, v in (spec.metadata or {}).items()})
    return merged


def step_key(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str:
    """The full key of the executing step (the one place that asks Dagster's step context)."""
    return context.get_step_execution_context().step.key


def _raw(value: Any) -> Any:
    """Metadata values may have been normalised into MetadataValue wrappers."""
    return getattr(value, "value", value) if isinstance(value, dg.MetadataValue) else value
