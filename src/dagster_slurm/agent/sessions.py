"""Which transport and job watcher a process uses for some settings: through the machine's connection
agent (``share_connection`` "auto" or "agent") or a direct SSH connection of its own ("direct").

This is the one place where that choice is made, and where a process keeps its transports."""

from __future__ import annotations

import logging
import threading

from dagster_slurm.agent.client import AgentTransport
from dagster_slurm.agent.protocol import AgentUnavailable
from dagster_slurm.agent.spawn import ensure_agent
from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import SSHConnectionError
from dagster_slurm.slurm import watcher as direct_watcher
from dagster_slurm.transport.ssh import get_transport

log = logging.getLogger("dagster_slurm.agent")

_lock = threading.Lock()
_transports: dict[SSHSettings, object] = {}
_holders: dict[SSHSettings, set[int]] = {}


def transport_for(settings: SSHSettings):
    """This process's transport for ``settings`` (the agent is started or joined on first use)."""
    with _lock:
        transport = _transports.get(settings)
        if transport is None:
            transport = _transports[settings] = _open(settings)
        return transport


def _open(settings: SSHSettings):
    if settings.share_connection == "direct":
        return get_transport(settings)
    try:
        ensure_agent(settings)
        return AgentTransport(settings)
    except AgentUnavailable as exc:
        if settings.share_connection == "agent":
            raise SSHConnectionError(
                f"SSHConnectionResource.share_connection='agent', but the connection agent could not start: "
                f"{exc}. Fix that, or set share_connection='auto' (fall back) or 'direct'.") from None
        log.warning("The connection agent could not start (%s); this process connects directly instead "
                    "(SSHConnectionResource.share_connection='auto'; set 'direct' to skip the agent).", exc)
        return get_transport(settings)


def watcher_for(transport, min_interval: float = 0.1, max_interval: float = 10.0):
    """The job watcher for ``transport``: the agent's (one per machine) or this process's own."""
    if isinstance(transport, AgentTransport):
        return transport.watcher(min_interval, max_interval)
    return direct_watcher.watcher_for(transport, min_interval, max_interval)


def hold_transport(settings: SSHSettings, holder: object):
    """``transport_for``, and note that ``holder`` (e.g. a resource instance) uses it until it releases it."""
    transport = transport_for(settings)
    with _lock:
        _holders.setdefault(settings, set()).add(id(holder))
    return transport


def release_transport(settings: SSHSettings, holder: object) -> None:
    """``holder`` is done: when it was the last holder, this process's connection (or its sockets to
    the agent) is closed; the next use reconnects. The agent itself stays for its idle timeout."""
    with _lock:
        holders = _holders.get(settings)
        if holders is None or id(holder) not in holders:
            return
        holders.discard(id(holder))
        transport = _transports.get(settings) if not holders else None
    if transport is not None:
        transport.close()  # type: ignore[attr-defined]


def close_all() -> None:
    """Close and forget every transport of this process (at exit, and between tests)."""
    with _lock:
        transports = list(_transports.values())
        _transports.clear()
        _holders.clear()
    for transport in transports:
        transport.close()  # type: ignore[attr-defined]
