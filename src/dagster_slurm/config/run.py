"""Per-run settings a user can set from the Dagster launchpad."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown


class SlurmRunConfig(dg.Config):
    """Launchpad-settable environment and payload options for one run.

    Fields left unset (``None``) do not count: asset metadata and ``ComputeResource`` defaults
    then apply. The built-in defaults are ``force_env_push=False`` and ``skip_payload_upload=False``.
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)


    force_env_push: bool | None = Field(
        default=None,
        description="Re-pack and upload the environment even when the cluster cache has it. "
        "Unset means: asset metadata, then False.",
    )
    skip_payload_upload: bool | None = Field(
        default=None,
        description="Do not upload the payload script; it must already exist on the cluster "
        "(at remote_payload_path, or {pre_deployed_env_path}/scripts/{filename}). Unset means: "
        "asset metadata, then ComputeResource.default_skip_payload_upload, then False.",
    )
    remote_payload_path: str | None = Field(
        default=None, description="Remote path of the payload when skip_payload_upload is true."
    )
