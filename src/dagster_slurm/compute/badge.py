"""The "slurm" kind badge: assets that run on the cluster are marked in Dagster's catalog and lineage graph."""

from __future__ import annotations

from typing import Any

import dagster as dg

SLURM_KIND = "slurm"


def slurm_asset(compute_fn: Any = None, **kwargs: Any) -> Any:
    """``dg.asset`` with the "slurm" kind added to its ``kinds`` (others kept). Use it bare
    (``@slurm_asset``) or with ``dg.asset``'s arguments (``@slurm_asset(partitions_def=...)``)."""
    kwargs["kinds"] = {*(kwargs.get("kinds") or ()), SLURM_KIND}
    if compute_fn is not None:
        return dg.asset(**kwargs)(compute_fn)
    return dg.asset(**kwargs)
