"""A setting we do not implement is an error naming what we offer instead, never silently dropped (pydantic
ignores unknown fields by default). Names users bring from the other dagster-slurm get a specific hint."""

from __future__ import annotations

from typing import Any

from dagster_slurm.errors import ConfigurationError

# settings of the other dagster-slurm project that we do not implement -> what to do here instead
NOT_OFFERED = {
    "signal_before_timeout": "it is a SlurmQueueConfig setting (or a resource_requirements key), e.g. 'TERM@120'",
    "session": "share one allocation between steps with ComputeResource.allocation=SlurmAllocation(...)",
    "allocation_scope": "use ComputeResource.allocation=SlurmAllocation(scope='run') (or scope='named', name=...)",
    "pack_on_remote": "environments are packed on this machine and uploaded once (ComputeResource.packer)",
    "force_tty": "commands need no TTY here; one-time-code prompts are answered by `dagster-slurm login` or "
                 "SSHConnectionResource.otp_command",
    "post_login_command": "put the setup into the environment's activate.sh or the asset's extra_env",
    "status_poll_interval": "use SlurmResource.poll_interval_min / poll_interval_max",
    "status_poll_max_interval": "use SlurmResource.poll_interval_max",
    "status_poll_backoff": "polling backs off by itself up to SlurmResource.poll_interval_max",
    "extra_opts": "use SlurmQueueConfig.extra_sbatch_options",
}


def reject_unknown(cls: Any, data: Any) -> Any:
    """For a ``model_validator(mode="before")``: raise on keys that are not fields of ``cls``."""
    if not isinstance(data, dict):
        return data
    fields = set(cls.model_fields)
    unknown = [k for k in data if k not in fields and not str(k).startswith("_")]
    if not unknown:
        return data
    parts = []
    for key in unknown:
        hint = NOT_OFFERED.get(key) or (NOT_OFFERED["status_poll_interval"] if str(key).startswith("status_poll")
                                        else None)
        parts.append(f"{key!r}" + (f" ({hint})" if hint else ""))
    raise ConfigurationError(f"{cls.__name__} has no setting {', '.join(parts)}. Its settings: "
                             f"{', '.join(sorted(f for f in fields if not f.startswith('_')))}.")
