"""dagster-slurm: run Dagster assets unchanged on a laptop or as Slurm jobs on an HPC cluster over SSH."""

from dagster_slurm.compute.badge import SLURM_KIND, slurm_asset
from dagster_slurm.compute.executor import slurm_executor
from dagster_slurm.compute.launchers import (
    BashLauncher,
    Launcher,
    RayLauncher,
    SrunLauncher,
    TorchrunLauncher,
)
from dagster_slurm.compute.resource import ComputeResource
from dagster_slurm.config import (
    SlurmAllocation,
    SlurmQueueConfig,
    SlurmResource,
    SlurmRunConfig,
    SSHConnectionResource,
)
from dagster_slurm.errors import (
    ConfigurationError,
    DagsterSlurmError,
    RemoteCommandError,
    SlurmJobError,
    SSHConnectionError,
)

__all__ = [
    "BashLauncher",
    "ComputeResource",
    "ConfigurationError",
    "DagsterSlurmError",
    "Launcher",
    "RayLauncher",
    "RemoteCommandError",
    "SSHConnectionError",
    "SSHConnectionResource",
    "SlurmAllocation",
    "SlurmJobError",
    "SlurmQueueConfig",
    "SlurmResource",
    "SlurmRunConfig",
    "SLURM_KIND",
    "SrunLauncher",
    "TorchrunLauncher",
    "slurm_asset",
    "slurm_executor",
]
