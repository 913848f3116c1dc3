"""The connection agent: one background process per user, machine and connection settings.

It owns the single SSH login (and jump host) and serves every local process over a Unix socket in a
private folder: commands, transfers, reads, cached probes, and ONE job watcher for all their jobs
(one squeue per tick for the machine). It accepts only its own uid (peer credentials) and leaves
after ``agent_idle_timeout`` seconds without requests and without jobs to watch.

Started by ``spawn.start_agent``: the first stdin line carries the settings (never argv); while it
logs in, prompts it cannot answer go to the starter as ``{"prompt": ...}`` lines on stdout and
answers come back on stdin (``dagster-slurm login`` relays them to a terminal). Then it prints
``{"ready": ...}`` or ``{"error": ...}`` and detaches from both pipes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict

from dagster_slurm.agent import protocol
from dagster_slurm.agent.protocol import b64, error_to_wire, settings_from_wire, stamp, unb64
from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.slurm.watcher import JobHandle, JobWatcher
from dagster_slurm.transport.auth import Prompts
from dagster_slurm.transport.ssh import SSHTransport

log = logging.getLogger("dagster_slurm.agent")

SESSION_EXPIRY = 120.0  # a client that has not asked about its jobs for this long is gone
WAIT_MAX = 30.0


def _peer_uid(sock) -> int | None:
    """The connecting process's uid (Linux: SO_PEERCRED). Elsewhere None: the 0700 folder is the guard."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


def _snapshot(handle: JobHandle) -> dict:
    return {
        "state": handle.state,
        "reason": handle.reason,
        "start": handle.start,
        "done": handle.done.is_set(),
        "final": asdict(handle.final) if handle.final is not None else None,
        "error": str(handle.error) if handle.error is not None else None,
        "exited": handle.exited.is_set(),
        "exit_code": handle.exit_code,
    }


class Agent:
    def __init__(self, settings, path: str, transport=None):
        self.settings = settings
        self.path = path
        self.transport = transport or SSHTransport(settings)  # (tests: a recorded transport)
        self.watcher = JobWatcher(self.transport)
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.inflight = 0
        self.clients_now = 0
        self.clients_total = 0
        self.requests = 0
        self.sessions: dict[str, set[str]] = {}
        self.session_seen: dict[str, float] = {}
        self._sessions_lock = threading.Lock()  # pool threads (watch, forget) and the loop share them
        self.jobs_watched_total = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="agent")
        self.stopping: asyncio.Event | None = None
        self.changed: asyncio.Condition | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._inode = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.listening = threading.Event()  # set once the socket accepts connections (bind alone is not enough)

    # ------------------------------------------------------------------ serving
    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.changed = asyncio.Condition()
        self.watcher.listeners.append(lambda: self.loop.call_soon_threadsafe(self._notify))  # type: ignore[union-attr]
        if os.path.exists(self.path):
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, self.path, backlog=1024)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self.listening.set()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.add_signal_handler(sig, self.stopping.set)
        housekeeping = asyncio.ensure_future(self._housekeeping())
        await self.stopping.wait()
        housekeeping.cancel()
        server.close()
        for writer in list(self._writers):
            writer.close()
        self.pool.shutdown(wait=False, cancel_futures=True)  # queued calls never run after a stop
        try:
            if os.path.exists(self.path) and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.transport.close(final=True)  # and no re-login by a call still running

    def _notify(self) -> None:
        async def wake() -> None:
            async with self.changed:  # type: ignore[union-attr]
                self.changed.notify_all()  # type: ignore[union-attr]
        asyncio.ensure_future(wake())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._housekeep():
                    self.stopping.set()  # type: ignore[union-attr]
                    return
            except Exception:  # noqa: BLE001 - housekeeping must outlive any one bad tick
                log.exception("housekeeping failed; continuing")

    def _housekeep(self) -> bool:
        """Expire silent sessions; whether to leave (idle, or replaced by a newer agent)."""
        now = time.monotonic()
        with self._sessions_lock:
            expired = [s for s, seen in self.session_seen.items() if now - seen > SESSION_EXPIRY]
        for session in expired:
            self._drop_session(session)
        with self._sessions_lock:
            busy = self.inflight or any(self.sessions.values())
        if busy:
            self.last_activity = now
        elif now - self.last_activity > self.settings.agent_idle_timeout:
            log.info("idle for %.0f s: leaving", self.settings.agent_idle_timeout)
            return True
        try:
            return os.stat(self.path).st_ino != self._inode  # replaced by a newer agent
        except FileNotFoundError:
            return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer.get_extra_info("socket"))
        if uid is not None and uid != os.getuid():
            log.warning("refused a client of uid %d (this agent serves uid %d only)", uid, os.getuid())
            writer.write(protocol.encode({"error": {"type": "DagsterSlurmError",
                                                    "message": "this agent serves its own user only"}}))
            writer.close()
            return
        self.clients_now += 1
        self.clients_total += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    header = await reader.readexactly(4)
                    request = json.loads(await reader.readexactly(protocol.decode_length(header)))
                except (asyncio.IncompleteReadError, ConnectionError, protocol.AgentGone):
                    return
                self.inflight += 1
                self.requests += 1
                try:
                    answer = {"ok": await self._dispatch(request.get("op", ""), request.get("args") or {})}
                except Exception as exc:  # noqa: BLE001 - every error goes back to the client
                    answer = {"error": error_to_wire(exc)}
                finally:
                    self.inflight -= 1
                    self.last_activity = time.monotonic()
                writer.write(protocol.encode(answer))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self.clients_now -= 1
            self._writers.discard(writer)
            writer.close()

    async def _dispatch(self, op: str, a: dict):
        if op in _LOOP_OPS:  # answered on the loop, never queued behind slow remote calls
            return _LOOP_OPS[op](self, a)
        if op == "wait":
            return await self._wait(a["session"], a.get("known") or {}, min(float(a.get("timeout", 10)), WAIT_MAX))
        if op in _SYNC_OPS:
            return await self.loop.run_in_executor(self.pool, _SYNC_OPS[op], self, a)  # type: ignore[union-attr]
        raise DagsterSlurmError(f"unknown agent request {op!r} (agent protocol v{protocol.VERSION})")

    # ------------------------------------------------------------------ the job watcher, shared
    def watch(self, session: str, jobs: list[str], min_interval: float, max_interval: float,
              exit_files: dict[str, str] | None = None) -> None:
        self.watcher.min_interval, self.watcher.max_interval = min_interval, max_interval
        with self._sessions_lock:
            held = self.sessions.setdefault(session, set())
            self.session_seen[session] = time.monotonic()
            new = [job for job in jobs if job not in held]
            held.update(jobs)
            self.jobs_watched_total += len(new)
        for job in jobs:
            self.watcher.watch(job, (exit_files or {}).get(job))
        self.loop.call_soon_threadsafe(self._notify)  # type: ignore[union-attr]

    def forget(self, session: str, jobs: list[str]) -> None:
        with self._sessions_lock:
            held = self.sessions.get(session, set())
            for job in jobs:
                held.discard(job)
            unheld = [job for job in jobs if not any(job in other for other in self.sessions.values())]
        for job in unheld:
            self.watcher.forget(job)

    def _drop_session(self, session: str) -> None:
        with self._sessions_lock:
            jobs = list(self.sessions.get(session, ()))
        self.forget(session, jobs)
        with self._sessions_lock:
            self.sessions.pop(session, None)
            self.session_seen.pop(session, None)

    def _snapshots(self, session: str) -> dict[str, dict]:
        with self._sessions_lock:
            jobs = list(self.sessions.get(session, ()))
        out = {}
        for job in jobs:
            handle = self.watcher._jobs.get(job)
            if handle is not None:
                out[job] = _snapshot(handle)
        return out

    async def _wait(self, session: str, known: dict[str, str], timeout: float) -> dict[str, dict]:
        """Long poll: the session's jobs as soon as any differs from what the client knows."""
        deadline = time.monotonic() + timeout
        assert self.changed is not None
        async with self.changed:
            while True:
                self.session_seen[session] = time.monotonic()
                snapshots = self._snapshots(session)
                # only the jobs the client asks about count (one it forgot meanwhile must not end the wait);
                # a job it asks about that we do not hold (a new agent): answer, so it registers it again
                if any(job not in snapshots or known[job] != stamp(snapshots[job]) for job in known):
                    return snapshots
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return snapshots
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def status(self) -> dict:
        s = self.settings
        return {
            "pid": os.getpid(), "version": protocol.VERSION, "started": self.started,
            "target": f"{s.user + '@' if s.user else ''}{s.host}:{s.port}"
                      + (f" via {s.jump_host}:{s.jump_port}" if s.jump_host else ""),
            "connected": self.transport.connected,
            "clients_now": self.clients_now - 1, "clients_total": self.clients_total - 1,
            "requests": self.requests, "jobs_watched_now": sum(len(j) for j in self.sessions.values()),
            "jobs_watched_total": self.jobs_watched_total, "ssh_logins": self.transport.stats.connections,
            "squeue_ticks": self.watcher.ticks, "idle_timeout": s.agent_idle_timeout,
            "idle_for": round(time.monotonic() - self.last_activity, 1), "socket": self.path,
        }


def _read_many(agent: Agent, a: dict):
    return [b64(d) for d in agent.transport.read_many([tuple(r) for r in a["requests"]], a["size"])]


def _run(agent: Agent, a: dict) -> dict:
    r = agent.transport.run(a["command"], timeout=a.get("timeout"), check=a.get("check", True),
                            retry=a.get("retry", False))
    return {"exit_status": r.exit_status, "stdout": r.stdout, "stderr": r.stderr}


def _run_later(agent: Agent, a: dict) -> None:
    agent.transport.run_later(a["command"])


def _stop(agent: Agent, a: dict) -> bool:
    agent.stopping.set()  # type: ignore[union-attr]
    return True


_LOOP_OPS = {
    "hello": lambda ag, a: {"pid": os.getpid(), "version": protocol.VERSION},
    "status": lambda ag, a: ag.status(),
    "stop": _stop,
}

_SYNC_OPS = {
    "run": _run,
    "run_later": _run_later,
    "home": lambda ag, a: ag.transport.home(),
    "probe": lambda ag, a: ag.transport.probe(a["command"], check=a.get("check", True)),
    "mkdir_p": lambda ag, a: ag.transport.mkdir_p(a["path"]),
    "mkdir": lambda ag, a: ag.transport.mkdir(a["path"], mode=a["mode"]),
    "touch": lambda ag, a: ag.transport.touch(a["path"]),
    "stat_mtime": lambda ag, a: ag.transport.stat_mtime(a["path"]),
    "stat_size": lambda ag, a: ag.transport.stat_size(a["path"]),
    "listdir": lambda ag, a: ag.transport.listdir(a["path"]),
    "write_many": lambda ag, a: ag.transport.write_many([(p, unb64(d) or b"", m) for p, d, m in a["files"]]),
    "put_file": lambda ag, a: ag.transport.put_file(a["local"], a["remote"], mode=a.get("mode")),
    "read_many": _read_many,
    "rename": lambda ag, a: ag.transport.rename(a["src"], a["dst"]),
    "watch": lambda ag, a: ag.watch(a["session"], a["jobs"], a["min_interval"], a["max_interval"],
                                    a.get("exit_files")),
    "forget": lambda ag, a: ag.forget(a["session"], a["jobs"]),
    "poke": lambda ag, a: ag.watcher.poke(),
}


# ---------------------------------------------------------------------- start-up over the starter's pipes
def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _relay(name: str, instructions: str, prompts: Prompts) -> list[str] | None:
    """Ask the starter (a terminal for ``dagster-slurm login``) and wait for its answers."""
    _emit({"prompt": {"name": name, "instructions": instructions, "prompts": [list(p) for p in prompts]}})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    answers = json.loads(line).get("answers") if line.strip() else None
    return answers


def _detach() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one line per SFTP call would fill the log
    start = json.loads(sys.stdin.readline())
    settings = settings_from_wire(start["settings"])
    agent = Agent(settings, start["socket"])
    if start.get("interactive"):
        agent.transport.ask = _relay
    try:
        agent.transport.login()  # now, so the starter learns of a refused login at once
    except Exception as exc:  # noqa: BLE001 - reported to the starter, then we leave
        _emit({"error": error_to_wire(exc)})
        return 1
    agent.transport.ask = None  # a later re-login has nobody to ask: it fails with "run dagster-slurm login"
    log.info("logged in to %s; serving %s", settings, agent.path)

    async def run() -> None:
        serving = asyncio.ensure_future(agent.serve())
        while not agent.listening.is_set() and not serving.done():
            await asyncio.sleep(0.005)
        if serving.done():
            serving.result()
        _emit({"ready": {"pid": os.getpid()}})
        _detach()
        await serving

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
