"""Locks for one environment build: a local file lock (one packer per machine) and a remote
directory lock (one uploader per cluster). The remote lock is a directory created atomically
(also on NFS) whose mtime its holder refreshes; a lock whose mtime stops moving is stale and broken."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from dagster_slurm.errors import DagsterSlurmError, RemoteFileError

log = logging.getLogger("dagster_slurm.packaging")

OWNER = "owner"  # "<hostname> <pid>" of the holder, inside the lock directory
CACHE_HOME = Path(os.environ.get("DAGSTER_SLURM_CACHE", Path.home() / ".cache" / "dagster-slurm"))


@contextlib.contextmanager
def local_lock(name: str, timeout: float, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive across processes of this machine (Linux, macOS, Windows); the OS frees it when a
    holder dies. ``on_wait`` is called once if the lock is held by someone else."""
    path = CACHE_HOME / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if on_wait is not None:
            on_wait()
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise DagsterSlurmError(f"Timed out after {timeout:g} s waiting for the local lock {path}.") from None
    try:
        yield
    finally:
        lock.release()


class RemoteLock:
    def __init__(self, transport, path: str, *, stale_after: float = 60.0, heartbeat: float = 10.0):
        self.transport = transport
        self.path = path
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        try:
            self.transport.mkdir(self.path)
        except RemoteFileError:
            return False
        try:  # who holds it: a waiter on this machine can tell at once when the holder died
            self.transport.write_bytes(f"{self.path}/{OWNER}", f"{socket.gethostname()} {os.getpid()}".encode())
        except RemoteFileError:
            pass  # without it, waiters fall back to the stale-mtime rule
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="dagster-slurm-lock")
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.transport.touch(self.path)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried
                log.warning("could not refresh lock %s: %s", self.path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.transport.run(f"rm -rf -- {shlex.quote(self.path)}", check=False, retry=True)

    def _dead_local_holder(self) -> int | None:
        """The pid of the lock's holder if it ran on this machine and no longer exists. Holders on other
        hosts are judged by the stale-mtime rule (NFS attribute caches hold 60 s)."""
        raw = self.transport.read_from(f"{self.path}/{OWNER}")
        host, _, pid = (raw or b"").decode(errors="replace").strip().partition(" ")
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            return None
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return int(pid)
        except OSError:
            return None  # exists, owned by someone else
        return None

    def wait_for(self, done: Callable[[], bool], timeout: float, log_fn: Callable[[str], None]) -> bool:
        """Wait until ``done()`` (another process published) -> False, or we hold the lock -> True."""
        deadline = time.monotonic() + timeout
        seen_mtime, seen_at = None, time.monotonic()
        told = False
        while True:
            if done():
                return False
            if self.try_acquire():
                return True
            dead = self._dead_local_holder()
            if dead is not None:
                log_fn(f"Breaking lock {self.path}: its holder, process {dead} on this machine, is gone.")
                self.transport.run(f"rm -rf -- {shlex.quote(self.path)}", check=False, retry=True)
                continue
            mtime = self.transport.stat_mtime(self.path)
            now = time.monotonic()
            if mtime != seen_mtime:
                seen_mtime, seen_at = mtime, now
            elif mtime is not None and now - seen_at > self.stale_after:
                log_fn(f"Breaking stale lock {self.path} (not refreshed for {self.stale_after:g} s).")
                self.transport.run(f"rm -rf -- {shlex.quote(self.path)}", check=False, retry=True)
                continue
            if not told:
                log_fn(f"Another process is building this environment (lock {self.path}); waiting for it.")
                told = True
            if now > deadline:
                raise DagsterSlurmError(
                    f"Timed out after {timeout:g} s waiting for {self.path}. If no deployment is running, "
                    f"remove it: rm -rf {self.path}"
                )
            time.sleep(0.5)
