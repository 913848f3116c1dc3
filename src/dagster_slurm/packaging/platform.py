"""Target platform of the cluster: asked once per agent (or direct connection) and cluster (``uname -m``)."""

from __future__ import annotations

from dagster_slurm.errors import ConfigurationError
from dagster_slurm.transport.probes import probe

ARCH_TO_PLATFORM = {
    "x86_64": "linux-64",
    "amd64": "linux-64",
    "aarch64": "linux-aarch64",
    "arm64": "linux-aarch64",
    "ppc64le": "linux-ppc64le",
}

def platform_for_arch(arch: str) -> str:
    try:
        return ARCH_TO_PLATFORM[arch.strip()]
    except KeyError:
        raise ConfigurationError(
            f"The edge node reports machine type {arch.strip()!r}, which dagster-slurm cannot map to a "
            "platform. Set ComputeResource.pack_platform (e.g. 'linux-64')."
        ) from None


def detect_platform(transport) -> str:
    """The cluster's platform, from one ``uname -m`` per transport (the agent's: once per machine)."""
    return platform_for_arch(probe(transport, "uname -m"))


def remote_python_version(transport, remote_python: str) -> str:
    """``major.minor`` of the cluster's ``remote_python`` (asked once per transport)."""
    import shlex

    out = probe(transport, f"{shlex.quote(remote_python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
                 check=False)
    if not out.strip() or not out.strip()[0].isdigit():
        raise ConfigurationError(
            f"The remote python {remote_python!r} could not be run on the cluster. Set "
            "ComputeResource.remote_python to an existing interpreter (e.g. /usr/bin/python3)."
        )
    return out.strip()


def resolve_platform(transport, pack_platform: str | None, auto_detect: bool) -> str:
    """``pack_platform`` wins; else detect if asked; else linux-64 (the common cluster platform)."""
    if pack_platform:
        return pack_platform
    if auto_detect:
        return detect_platform(transport)
    return "linux-64"
