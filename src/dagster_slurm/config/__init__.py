"""Configuration layer: Dagster resources and config, environment-variable loading, validation."""

from dagster_slurm.config.allocation import SlurmAllocation
from dagster_slurm.config.queue import SlurmQueueConfig
from dagster_slurm.config.run import SlurmRunConfig
from dagster_slurm.config.slurm import SlurmResource
from dagster_slurm.config.ssh import SSHConnectionResource

__all__ = ["SSHConnectionResource", "SlurmAllocation", "SlurmQueueConfig", "SlurmResource", "SlurmRunConfig"]
