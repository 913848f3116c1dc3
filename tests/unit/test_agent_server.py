"""The real agent server and client over a real Unix socket, with a recorded transport in place of SSH:
several client processes' watchers share the agent's one watcher (one squeue per tick for all jobs),
errors keep their type, and a call to a vanished agent is replayed only when it is idempotent."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path

import pytest
from recorded_transport import RecordedTransport

from dagster_slurm.agent.client import AgentTransport
from dagster_slurm.agent.server import Agent
from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import RemoteCommandError, SSHConnectionError

DATA = Path(__file__).parents[1] / "data" / "slurm"


def _recorded(name: str) -> str:
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("# "))


class _Recorded(RecordedTransport):
    connected = True

    def home(self) -> str:
        return "/home/alice"

    def close(self) -> None:
        pass


@pytest.fixture
def agent(monkeypatch):
    folder = tempfile.mkdtemp(prefix="dsa-u-", dir="/tmp")
    monkeypatch.setenv("DAGSTER_SLURM_RUNTIME_DIR", folder)
    settings = SSHSettings(host="login.example", user="alice", key_path="/k", agent_idle_timeout=60)
    from dagster_slurm.agent.spawn import paths

    squeue = _recorded("squeue_terminal.txt")
    sacct = _recorded("sacct_completed.txt")
    transport = _Recorded({"squeue": squeue, "sacct": sacct, "false": {"exit_status": 1, "stdout": "",
                                                                     "stderr": "recorded failure"}})
    server = Agent(settings, paths(settings)[0], transport)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    while not os.path.exists(server.path):
        pass
    yield settings, server, transport
    loop.call_soon_threadsafe(server.stopping.set)
    thread.join(10)


def test_two_processes_watchers_share_one_poll(agent):
    settings, server, transport = agent
    job15 = "15"  # squeue_terminal.txt and sacct_completed.txt are real recordings of job 15
    a, b = AgentTransport(settings), AgentTransport(settings)  # two client "processes"
    ha = a.watcher(0.05, 1).watch(job15)
    hb = b.watcher(0.05, 1).watch(job15)
    assert ha.wait(10) and hb.wait(10)
    assert ha.final is not None and ha.final.state == "COMPLETED" and ha.final.max_rss_bytes == 48632 * 1024
    assert hb.final == ha.final
    squeues = [c for c in transport.commands if c.startswith("squeue")]
    assert len(squeues) == server.watcher.ticks and len(squeues) <= 2  # one watcher for both clients
    status = server.status()
    assert status["jobs_watched_total"] == 2 and status["requests"] >= 4


def test_errors_cross_the_socket_with_their_type(agent):
    settings, _server, _transport = agent
    client = AgentTransport(settings)
    assert client.run("false", check=False).exit_status == 1
    with pytest.raises(RemoteCommandError, match="recorded failure"):
        client.run("false")
    assert client.home() == "/home/alice" and client.absolute("x/y") == "/home/alice/x/y"


def test_a_vanished_agent_is_replaced_for_idempotent_calls_only(agent, monkeypatch):
    settings, server, _transport = agent
    client = AgentTransport(settings)
    client.run("true", retry=True)
    sock = client._idle[0]
    sock.shutdown(2)  # the pooled connection dies as if the agent were killed

    started = []
    monkeypatch.setattr("dagster_slurm.agent.client.ensure_agent", lambda s: started.append(s))
    client._idle = []  # no pooled socket: the next call reconnects
    os.rename(server.path, server.path + ".moved")  # nothing listens at the path any more
    try:
        with pytest.raises(SSHConnectionError):
            client.mkdir("claim", mode=0o700)  # ensure_agent 'started' nothing: a clear error, no hang
        assert started == [settings]
    finally:
        os.rename(server.path + ".moved", server.path)
