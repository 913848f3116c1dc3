"""The real agent server and client over a real Unix socket, with a recorded transport in place of SSH:
several client processes' watchers share the agent's one watcher (one squeue per tick for all jobs),
errors keep their type, and a call to a vanished agent is replayed only when it is idempotent."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

import pytest
from recorded_transport import RecordedTransport

from dagster_slurm.agent.client import AgentTransport
from dagster_slurm.agent.protocol import AgentUnavailable
from dagster_slurm.agent.server import Agent
from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import RemoteCommandError, SSHConnectionError

DATA = Path(__file__).parents[1] / "data" / "slurm"


def _recorded(name: str) -> str:
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("# "))


class _Recorded(RecordedTransport):
    """Recorded Slurm answers; file operations are counted, and one can cut the agent's client
    connections mid-call (as if the agent died while serving it)."""

    connected = True
    cut_during: set[str] = set()
    server: Agent | None = None

    def __init__(self, answers):
        super().__init__(answers)
        self.ran: list[str] = []

    def _maybe_cut(self, op: str) -> None:
        self.ran.append(op)
        if op in self.cut_during:
            self.cut_during.discard(op)
            assert self.server is not None and self.server.loop is not None
            for writer in list(self.server._writers):
                self.server.loop.call_soon_threadsafe(writer.close)
            time.sleep(0.2)  # the connection is gone before this call would answer

    def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        self._maybe_cut("mkdir")

    def stat_size(self, path: str) -> int | None:
        self._maybe_cut("stat_size")
        return 7

    def home(self) -> str:
        return "/home/alice"

    def close(self, **_kw) -> None:
        pass


@pytest.fixture
def agent(monkeypatch):
    folder = tempfile.mkdtemp(prefix="dsa-u-", dir="/tmp")
    monkeypatch.setenv("DAGSTER_SLURM_RUNTIME_DIR", folder)
    # A closed loopback port: nothing here may reach a network, and no real agent is ever started
    # (a client that found no agent would otherwise start one that logs in).
    settings = SSHSettings(host="127.0.0.1", port=9, user="alice", key_path="/k", agent_idle_timeout=60)

    def no_real_agent(_settings, *_a):
        raise AgentUnavailable("the test's agent did not answer (unit tests never start a real one)")

    monkeypatch.setattr("dagster_slurm.agent.client.ensure_agent", no_real_agent)
    from dagster_slurm.agent.spawn import paths

    squeue = _recorded("squeue_waited_completed.txt")
    sacct = _recorded("sacct_waited.txt")
    transport = _Recorded({"squeue": squeue, "sacct": sacct, "false": {"exit_status": 1, "stdout": "",
                                                                     "stderr": "recorded failure"}})
    server = Agent(settings, paths(settings)[0], transport)
    transport.server = server
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    assert server.listening.wait(10), "the test's agent never listened"
    yield settings, server, transport
    loop.call_soon_threadsafe(server.stopping.set)
    thread.join(10)

    async def finish_client_tasks() -> None:  # the connections' handlers, ended by the stop
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    loop.run_until_complete(finish_client_tasks())
    loop.close()


def test_two_processes_watchers_share_one_poll(agent):
    settings, server, transport = agent
    job = "2060"  # squeue_waited_completed.txt and sacct_waited.txt are real recordings of job 2060
    a, b = AgentTransport(settings), AgentTransport(settings)  # two client "processes"
    ha = a.watcher(0.05, 1).watch(job)
    hb = b.watcher(0.05, 1).watch(job)
    assert ha.wait(10) and hb.wait(10)
    assert ha.final is not None and ha.final.state == "COMPLETED" and ha.final.max_rss_bytes == 9612 * 1024
    assert ha.final.queue_wait_seconds == 6  # crossed the socket whole
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


def test_a_call_cut_off_is_replayed_only_when_idempotent(agent):
    settings, _server, transport = agent
    client = AgentTransport(settings)
    transport.cut_during = {"stat_size"}
    assert client.stat_size("f") == 7  # cut off, replayed on a new connection
    assert transport.ran == ["stat_size", "stat_size"]
    transport.cut_during = {"mkdir"}
    with pytest.raises(SSHConnectionError, match="not repeated"):
        client.mkdir("claim", mode=0o700)  # a claim that may have taken effect is never sent twice
    assert transport.ran.count("mkdir") == 1


def test_no_agent_and_none_can_start_is_a_clear_error(agent, monkeypatch):
    settings, server, _transport = agent
    started = []
    monkeypatch.setattr("dagster_slurm.agent.client.ensure_agent", lambda s: started.append(s))
    client = AgentTransport(settings)
    client.path = server.path + ".gone"  # nothing listens where it looks
    with pytest.raises(SSHConnectionError, match="does not answer"):
        client.mkdir("claim", mode=0o700)
    assert started == [settings]
