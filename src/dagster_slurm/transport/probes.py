"""Facts about the cluster asked once and kept by the transport (``uname -m``, the remote Python's
version, ``sbatch --help``, ...): per connection agent, so once per machine and cluster, or per
process with a direct connection."""

from __future__ import annotations


def probe(transport, command: str, check: bool = True) -> str:
    """stdout of a read-only fact-finding command, run once per transport (or agent) and command."""
    return transport.probe(command, check=check)
