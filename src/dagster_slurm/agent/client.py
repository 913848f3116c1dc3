"""The client side of the agent: a ``Transport`` and a job watcher that talk to it over its socket.

Each call borrows a socket from a small per-process pool (one request at a time per socket), so
threads of one process run calls concurrently. When the agent is gone (idle timeout, killed), the
next call starts or joins a new one; a call cut off in the middle is replayed only when it is
idempotent, exactly like a dropped SSH connection (the exactly-once logic above handles the rest).
"""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import threading
import time
import uuid

from dagster_slurm.agent import protocol
from dagster_slurm.agent.protocol import AgentGone, AgentUnavailable, b64, unb64
from dagster_slurm.agent.spawn import connect, ensure_agent, paths
from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import DagsterSlurmError, SSHConnectionError
from dagster_slurm.slurm.parse import JobAccounting
from dagster_slurm.slurm.watcher import HandleSet, JobHandle, PollFailures
from dagster_slurm.transport.base import (
    CommandResult,
    ProgressCallback,
    TransportStats,
    absolute_path,
    remove_command,
)

POOL_KEEP = 8


class AgentTransport:
    """:class:`~dagster_slurm.transport.base.Transport` through the machine's connection agent."""

    def __init__(self, settings: SSHSettings):
        self.settings = settings
        self.stats = TransportStats()
        self.path = paths(settings)[0]
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._home: str | None = None
        self._watcher: AgentWatcher | None = None

    # ------------------------------------------------------------------ sockets
    def _checkout(self) -> socket.socket:
        with self._lock:
            while self._idle:
                sock = self._idle.pop()
                if _still_open(sock):
                    return sock
                sock.close()
        try:
            return connect(self.path)
        except OSError:
            pass  # absent, or busy: ensure_agent waits out a busy one and starts one only where none listens
        try:
            ensure_agent(self.settings)
            return connect(self.path)
        except AgentUnavailable as exc:
            raise SSHConnectionError(f"The connection agent for {self.settings} could not be started: {exc}. "
                                     "Set SSHConnectionResource.share_connection='direct' to connect without it.") \
                from None
        except OSError as exc:
            raise SSHConnectionError(f"The connection agent at {self.path} does not answer: {exc}") from None

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < POOL_KEEP:
                self._idle.append(sock)
                return
        sock.close()

    def call(self, op: str, args: dict, *, timeout: float, replay: bool):
        """One request. ``replay``: resend it once if the agent vanished meanwhile (idempotent ops only)."""
        for attempt in (0, 1):
            sock = self._checkout()
            try:
                sock.settimeout(timeout)
                protocol.send(sock, {"op": op, "args": args})
                answer = protocol.receive(sock)
            except TimeoutError:
                sock.close()
                raise SSHConnectionError(f"The connection agent gave no answer to {op} within {timeout:g} s "
                                         f"(its log: {paths(self.settings)[1]}).") from None
            except (AgentGone, OSError) as exc:
                sock.close()
                if attempt == 0 and replay:
                    continue
                raise SSHConnectionError(
                    f"The connection agent went away during {op} ({exc}); it was not repeated, as it may "
                    "have taken effect. The next call starts a new agent.") from None
            self._checkin(sock)
            if "error" in answer:
                raise protocol.error_from_wire(answer["error"])
            return answer["ok"]
        raise AssertionError("unreachable")

    def _bound(self, timeout: float | None = None) -> float:
        return (timeout or self.settings.command_timeout) * 2 + self.settings.connect_timeout * 2 + 10

    def _file(self, op: str, args: dict, *, replay: bool = True, timeout: float | None = None):
        with self._lock:
            self.stats.sftp_ops += 1
        return self.call(op, args, timeout=self._bound(timeout), replay=replay)

    # ------------------------------------------------------------------ the Transport interface
    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            retry: bool = False) -> CommandResult:
        with self._lock:
            self.stats.log_command(command)
        r = self.call("run", {"command": command, "timeout": timeout, "check": check, "retry": retry},
                      timeout=self._bound(timeout), replay=retry)
        return CommandResult(command, r["exit_status"], r["stdout"], r["stderr"])

    def run_later(self, command: str) -> None:
        """The agent runs it after answering: off this process's critical path, and it survives this
        process's exit."""
        with self._lock:
            self.stats.log_command(command)
        self.call("run_later", {"command": command}, timeout=self._bound(), replay=True)

    def home(self) -> str:
        if self._home is None:
            self._home = self._file("home", {})
        return self._home  # type: ignore[return-value]

    def probe(self, command: str, *, check: bool = True) -> str:
        """Asked once per agent, so once per machine and cluster."""
        return self.call("probe", {"command": command, "check": check}, timeout=self._bound(), replay=True)

    def absolute(self, path: str) -> str:
        return absolute_path(self.home, path)

    def mkdir_p(self, path: str) -> None:
        self._file("mkdir_p", {"path": path})

    def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        self._file("mkdir", {"path": path, "mode": mode}, replay=False)  # a claim: never replayed

    def touch(self, path: str) -> None:
        self._file("touch", {"path": path})

    def stat_mtime(self, path: str) -> float | None:
        return self._file("stat_mtime", {"path": path})

    def stat_size(self, path: str) -> int | None:
        return self._file("stat_size", {"path": path})

    def listdir(self, path: str) -> list[str] | None:
        return self._file("listdir", {"path": path})

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.write_many([(path, data, mode)])

    def write_many(self, files: list[tuple[str, bytes, int]]) -> None:
        self._file("write_many", {"files": [[p, b64(d), m] for p, d, m in files]})
        self.stats.bytes_uploaded += sum(len(d) for _, d, _ in files)

    def put_file(self, local: str, remote: str, *, progress: ProgressCallback | None = None,
                 mode: int | None = None) -> None:
        """The agent runs on this machine as this user: it reads ``local`` itself."""
        size = os.path.getsize(local)
        self._file("put_file", {"local": os.path.abspath(local), "remote": remote, "mode": mode},
                   timeout=max(self.settings.command_timeout, size / 1e6))
        self.stats.bytes_uploaded += size
        if progress:
            progress(size, size)

    def read_from(self, path: str, offset: int = 0, size: int = 1 << 20) -> bytes | None:
        return self.read_many([(path, offset)], size)[0]

    def read_many(self, requests: list[tuple[str, int]], size: int = 1 << 20) -> list[bytes | None]:
        return [unb64(d) for d in self._file("read_many", {"requests": [list(r) for r in requests], "size": size})]

    def rename(self, src: str, dst: str) -> None:
        self._file("rename", {"src": src, "dst": dst}, replay=False)

    def remove(self, path: str) -> None:
        self.run(remove_command(path), retry=True)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def watcher(self, min_interval: float, max_interval: float) -> AgentWatcher:
        with self._lock:
            if self._watcher is None:
                self._watcher = AgentWatcher(self)
        self._watcher.min_interval, self._watcher.max_interval = min_interval, max_interval
        return self._watcher


def _still_open(sock: socket.socket) -> bool:
    """Whether a pooled socket's agent is still there (EOF shows without a round trip)."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return True  # nothing to read: no EOF either
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


class AgentWatcher(HandleSet):
    """The job watcher of this process, backed by the agent's one watcher for the machine.

    Same interface as :class:`~dagster_slurm.slurm.watcher.JobWatcher`. One thread long-polls the agent
    for this process's jobs; if the agent is replaced, the jobs are registered again with the new one."""

    thread_name = "dagster-slurm-agent-watch"

    def __init__(self, transport: AgentTransport, min_interval: float = 0.1, max_interval: float = 10.0):
        super().__init__()
        self._transport = transport
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.session = uuid.uuid4().hex
        self._known: dict[str, str] = {}
        self._exit_files: dict[str, str] = {}

    def _register(self, jobs: list[str]) -> None:
        with self._lock:
            exit_files = {j: self._exit_files[j] for j in jobs if j in self._exit_files}
        self._transport.call("watch", {"session": self.session, "jobs": jobs, "min_interval": self.min_interval,
                                       "max_interval": self.max_interval, "exit_files": exit_files},
                             timeout=self._transport._bound(30), replay=True)

    def watch(self, job_id: str, exit_file: str | None = None) -> JobHandle:
        with self._lock:
            if exit_file:
                self._exit_files[job_id] = exit_file
        self._register([job_id])
        with self._lock:
            handle, _started = self._handle(job_id)
        return handle

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._known.pop(job_id, None)
            self._exit_files.pop(job_id, None)
        try:
            self._transport.call("forget", {"session": self.session, "jobs": [job_id]}, timeout=30, replay=True)
        except DagsterSlurmError:
            pass  # the agent forgets a session it stops hearing from

    def poke(self) -> None:
        """Poll now (e.g. the payload's exit file appeared)."""
        try:
            self._transport.call("poke", {}, timeout=30, replay=True)
        except DagsterSlurmError:
            pass

    def _loop(self) -> None:
        failures = PollFailures()
        while True:
            handles = self._next_active()
            if handles is None:
                return
            active = {h.job_id: h for h in handles}
            try:
                snapshots = self._transport.call(
                    "wait", {"session": self.session, "known": {j: self._known.get(j, "") for j in active},
                             "timeout": 10}, timeout=40, replay=True)
                failures.ok()
            except DagsterSlurmError as exc:
                if failures.failed():
                    for h in active.values():
                        h.error = exc
                        h.done.set()
                time.sleep(min(failures.count, 4) * 0.5)
                continue
            with self._lock:  # not a job forgotten while the wait was out
                missing = [j for j in active if j not in snapshots and j in self._jobs]
            if missing:  # a new agent: tell it about our jobs (their state is found again in squeue/sacct)
                try:
                    self._register(missing)
                except DagsterSlurmError:
                    time.sleep(0.5)
            for job, snap in snapshots.items():
                handle = active.get(job)
                if handle is None:
                    continue
                try:
                    self._apply(job, handle, snap)
                except Exception as exc:  # noqa: BLE001 - a snapshot this process cannot read ends its wait, never hangs it
                    handle.error = DagsterSlurmError(
                        f"The connection agent's answer about Slurm job {job} could not be read ({exc!r}); the job "
                        "itself is untouched. Stop the agent (`dagster-slurm agent stop`) if it runs another "
                        "version of dagster-slurm, then re-execute the step: it reattaches to the job.")
                    handle.done.set()

    def _apply(self, job: str, handle: JobHandle, snap: dict) -> None:
        self._known[job] = protocol.stamp(snap)
        handle.state, handle.reason, handle.start = snap["state"], snap["reason"], snap.get("start", "")
        if snap.get("exited"):
            handle.mark_exited(snap.get("exit_code"))
        if snap["done"]:
            handle.final = accounting_from(snap["final"]) if snap["final"] else None
            handle.error = DagsterSlurmError(snap["error"]) if snap["error"] else None
            handle.done.set()


def accounting_from(fields: dict) -> JobAccounting:
    """A JobAccounting from an agent's snapshot; fields this version does not know (an agent of a newer
    version) are left out, missing ones take their defaults."""
    known = {f.name for f in dataclasses.fields(JobAccounting)}
    return JobAccounting(**{k: v for k, v in fields.items() if k in known})
