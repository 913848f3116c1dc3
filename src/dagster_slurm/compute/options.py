"""Resolve per-run options by the documented precedence. Pure.

1. explicit parameters of ``compute.run(...)``
2. ``SlurmRunConfig`` values the user set (unset fields are ``None`` and do not count)
3. asset metadata (``slurm_force_env_push``, ``slurm_skip_payload_upload``, ``slurm_remote_payload_path``; the
   other dagster-slurm's ``skip_slurm_payload_upload`` and ``slurm_payload_path`` count too, ours win)
4. ``ComputeResource`` defaults (``default_skip_payload_upload``)
5. built-in defaults (``False``, ``False``, ``None``)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPTION_NAMES = ("force_env_push", "skip_payload_upload", "remote_payload_path")
METADATA_PREFIX = "slurm_"
METADATA_ALIASES = {"skip_payload_upload": "skip_slurm_payload_upload", "remote_payload_path": "slurm_payload_path"}
BUILT_IN: dict[str, Any] = {"force_env_push": False, "skip_payload_upload": False, "remote_payload_path": None}


@dataclass(frozen=True)
class RunOptions:
    force_env_push: bool
    skip_payload_upload: bool
    remote_payload_path: str | None
    sources: Mapping[str, str]  # option -> where its value came from, for the log


def resolve_run_options(
    explicit: Mapping[str, Any],
    run_config: Any | None,
    metadata: Mapping[str, Any],
    resource_defaults: Mapping[str, Any],
) -> RunOptions:
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("explicit parameter", explicit),
        ("SlurmRunConfig", {n: getattr(run_config, n, None) for n in OPTION_NAMES} if run_config else {}),
        ("asset metadata", {n: _first(metadata.get(METADATA_PREFIX + n), metadata.get(METADATA_ALIASES.get(n, "")))
                            for n in OPTION_NAMES}),
        ("ComputeResource default", resource_defaults),
        ("built-in default", BUILT_IN),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in OPTION_NAMES:
        for source, layer in layers:
            if layer.get(name) is not None:
                values[name], sources[name] = layer[name], source
                break
        else:
            values[name], sources[name] = None, "built-in default"
    return RunOptions(bool(values["force_env_push"]), bool(values["skip_payload_upload"]),
                      values["remote_payload_path"], sources)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)
