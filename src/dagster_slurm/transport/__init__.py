"""Transport layer: the one seam through which every remote command, upload and read goes."""

from dagster_slurm.transport.base import CommandResult, Transport, TransportStats
from dagster_slurm.transport.ssh import (
    SSHTransport,
    close_all_transports,
    get_transport,
)

__all__ = [
    "CommandResult",
    "SSHTransport",
    "Transport",
    "TransportStats",
    "close_all_transports",
    "get_transport",
]
