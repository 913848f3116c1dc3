"""``SlurmAllocation``: one Slurm job that many assets' payloads run in, as job steps."""

from __future__ import annotations

import re
from typing import Literal

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown
from dagster_slurm.errors import ConfigurationError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SlurmAllocation(dg.Config):
    """An allocation that many steps share, so that a queue wait is paid once.

    The allocation is a real Slurm job (a small holder script, submitted with sbatch). Each asset's payload
    runs in it as a job step (``srun --exact`` with the asset's own cpus, mem and time), side by side while
    they fit and queued inside the allocation when they do not. ``scope="run"``: acquired by the first step
    of a run that needs it, released when the run has no step left (or, at the latest, ``idle_timeout``
    seconds after its last step). ``scope="named"``: shared by every run that names it (a schedule, a
    backfill), kept until ``idle_timeout`` passes without a step. Either way the holder job ends itself once
    idle: nothing idles on the cluster after every Dagster process is gone.

    Example::

        ComputeResource(mode="slurm", slurm=slurm,
                        allocation=SlurmAllocation(num_nodes=1, cpus=8, mem="32G", time_limit="04:00:00"))
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)

    num_nodes: int = Field(default=1, ge=1, description="Nodes of the allocation (--nodes).")
    cpus: int = Field(default=1, ge=1, description="CPUs per node that the steps share (--cpus-per-task of the "
                      "allocation's one task per node).")
    mem: str | None = Field(default=None, description="Memory per node that the steps share, e.g. '32G' "
                            "(--mem). Unset: the cluster's default.")
    time_limit: str = Field(default="01:00:00", description="Wall-clock limit of the allocation (--time). A "
                            "step whose own time_limit no longer fits in what is left fails naming it.")
    partition: str | None = Field(default=None, description="Partition. Default: SlurmQueueConfig.partition.")
    nodelist: str | None = Field(default=None, description="Pin the allocation to these nodes (--nodelist).")
    account: str | None = Field(default=None, description="Account (--account). Default: SlurmQueueConfig's.")
    qos: str | None = Field(default=None, description="Quality of service (--qos). Default: SlurmQueueConfig's.")
    scope: Literal["run", "named"] = Field(default="run", description="'run': one allocation per Dagster run. "
                                           "'named': one per name, shared by consecutive runs.")
    name: str | None = Field(default=None, description="The allocation's name (required with scope='named').")
    idle_timeout: float = Field(default=600.0, gt=0, description="Seconds without a step after which the "
                                "holder job ends itself.")

    @model_validator(mode="after")
    def _check(self) -> SlurmAllocation:
        if self.scope == "named" and not self.name:
            raise ConfigurationError("SlurmAllocation(scope='named') needs name=..., e.g. name='nightly': the "
                                     "runs that give the same name share the allocation.")
        if self.name is not None and not NAME.match(self.name):
            raise ConfigurationError(f"SlurmAllocation.name={self.name!r}: use 1-64 letters, digits, '_', '.' "
                                     "or '-', starting with a letter or digit.")
        for field_name in ("mem", "time_limit", "partition", "nodelist", "account", "qos"):
            value = getattr(self, field_name)
            if value is not None and (not str(value).strip() or any(c in str(value) for c in "\n\r'\" ")):
                raise ConfigurationError(f"SlurmAllocation.{field_name}={value!r}: give a plain value "
                                         "(no spaces, quotes or line breaks), e.g. mem='32G'.")
        return self
