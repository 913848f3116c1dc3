"""SSH transport over asyncssh: one connection per transport (the agent's, or a process's with
``share_connection="direct"``), many channels over it.

Commands run in pooled long-lived remote shells (``shell.py``); files move over one SFTP session.
Every call is logged at DEBUG on the ``dagster_slurm.transport`` logger and counted in ``stats``.
A dropped connection is reopened on the next call; calls marked ``retry`` are replayed once.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncssh

from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import (
    RemoteCommandError,
    RemoteFileError,
    SSHConnectionError,
)
from dagster_slurm.transport.auth import Ask, LoginAnswers
from dagster_slurm.transport.base import (
    CommandResult,
    ProgressCallback,
    TransportStats,
    absolute_path,
    remove_command,
)
from dagster_slurm.transport.loop import run_sync
from dagster_slurm.transport.shell import RemoteShell, ShellBroken

log = logging.getLogger("dagster_slurm.transport")
T = TypeVar("T")

REFUSED_LOGIN_PAUSE = 30.0  # seconds a refused login is answered from memory, not retried on the server

_LOST = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError, BrokenPipeError,
         ConnectionResetError, ShellBroken)


def _known_hosts(settings: SSHSettings):
    path = settings.known_hosts_file
    if settings.host_key_checking == "off":
        return None
    if path and os.path.exists(path):
        return asyncssh.read_known_hosts(path)
    return asyncssh.import_known_hosts("")


def _client_factory(settings: SSHSettings, known, on_lost: Callable[[object], None], answers: LoginAnswers):
    class _Client(asyncssh.SSHClient):
        _conn: object = None

        def connection_made(self, conn) -> None:
            self._conn = conn

        def kbdint_auth_requested(self) -> str:
            return ""  # let the server pick (PAM: a password, a one-time code, ...)

        async def kbdint_challenge_received(self, name, instructions, lang, prompts):
            return await answers.challenge(name, instructions, list(prompts))

        async def password_auth_requested(self):
            return await answers.password()

        def validate_host_public_key(self, host, addr, port, key) -> bool:
            # Only reached for keys known_hosts does not trust. accept-new trusts an unknown host once
            # and records it; a host with a different recorded key is refused (possible MITM).
            if settings.host_key_checking != "accept-new" or known.match(host, addr, port)[0]:
                return False
            name = host if port == 22 else f"[{host}]:{port}"
            line = f"{name} {key.export_public_key().decode().split()[0]} " + \
                key.export_public_key().decode().split()[1]
            path = settings.known_hosts_file or os.path.expanduser("~/.ssh/known_hosts")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a") as fh:
                fh.write(line + "\n")
            log.warning("accept-new: recorded the host key of %s in %s", name, path)
            return True

        def connection_lost(self, exc) -> None:
            on_lost(self._conn)  # which connection died: a late report of an old one must not drop a new one

    return _Client


class SSHTransport:
    """The SSH implementation of :class:`~dagster_slurm.transport.base.Transport`."""

    def __init__(self, settings: SSHSettings):
        self.settings = settings
        self.stats = TransportStats()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._shells: list[RemoteShell] = []
        self._connect_lock: asyncio.Lock | None = None
        self._home: str | None = None
        self._stats_lock = threading.Lock()
        self._facts: dict[tuple[str, bool], str] = {}
        self.ask: Ask | None = None  # who answers login prompts the settings cannot (dagster-slurm login)
        self._later: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed_for_good = False
        self._refused: tuple[float, str] | None = None  # (when, why) the last login was refused

    # ----------------------------------------------------------------- connection
    def _count(self, **kw: int) -> None:
        with self._stats_lock:
            for name, n in kw.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def _mark_lost(self, conn: object = None) -> None:
        """Forget the connection (``conn``: only if it is still the current one) and close what hangs on it."""
        if conn is not None and conn is not self._conn:
            return
        old, shells = self._conn, self._shells
        self._conn, self._sftp, self._shells = None, None, []
        for shell in shells:
            shell.close()
        if old is not None and not old.is_closed():
            old.close()  # a connection we stop using is closed, not leaked

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _describe(self) -> str:
        s = self.settings
        return f"{s.user + '@' if s.user else ''}{s.host}:{s.port}"

    async def _open(self, host: str, port: int, user: str | None, tunnel=None,
                    is_target: bool = True) -> asyncssh.SSHClientConnection:
        """Open one connection (the edge node, or with ``is_target=False`` the jump host)."""
        s = self.settings
        known = _known_hosts(s)
        answers = LoginAnswers(s, self.ask)
        kwargs: dict = {
            "port": port,
            "known_hosts": known,
            "connect_timeout": s.connect_timeout,
            "login_timeout": self._login_timeout(),
            "keepalive_interval": s.keepalive_interval,
            "keepalive_count_max": 3,
            "client_factory": _client_factory(s, known, self._mark_lost if is_target else lambda _conn: None,
                                              answers),
            "kbdint_auth": True,  # answered by LoginAnswers; a prompt it cannot answer fails the login at once
        }
        if user:
            kwargs["username"] = user
        if tunnel is not None:
            kwargs["tunnel"] = tunnel
        if s.key_path:
            kwargs.update(client_keys=[s.key_path], agent_path=None, password_auth=False,
                          passphrase=s.key_passphrase)
        elif s.password:
            kwargs.update(password=s.password, client_keys=None, agent_path=None)
        try:
            return await self._connect_with_retries(host, port, kwargs)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            if isinstance(exc, asyncssh.KeyEncryptionError):
                problem = "could not be decrypted with key_passphrase (SLURM_EDGE_NODE_KEY_PASSPHRASE): check it"
            elif "passphrase" in str(exc).lower():
                problem = "is encrypted: set key_passphrase (SLURM_EDGE_NODE_KEY_PASSPHRASE), e.g. with dg.EnvVar"
            else:
                problem = f"could not be read ({exc}): is it an SSH private key?"
            raise SSHConnectionError(
                f"The private key {s.key_path} (SSHConnectionResource.key_path, SLURM_EDGE_NODE_KEY_PATH) {problem}."
            ) from None
        except asyncssh.HostKeyNotVerifiable:
            raise SSHConnectionError(self._host_key_message(host, port, known)) from None
        except asyncssh.PermissionDenied:
            method = "key " + s.key_path if s.key_path else ("password" if s.password else "ssh-agent/default keys")
            raise SSHConnectionError(answers.refused_message(f"{user or '<default user>'}@{host}:{port}", method)) \
                from None
        except (asyncio.TimeoutError, TimeoutError):
            raise SSHConnectionError(
                f"Could not reach {host}:{port} within {s.connect_timeout:g} s "
                "(SSHConnectionResource.connect_timeout). Check SLURM_EDGE_NODE_HOST/PORT, VPN and firewall."
            ) from None
        except OSError as exc:
            raise SSHConnectionError(
                f"Could not connect to {host}:{port}: {exc.strerror or exc}. "
                "Check SLURM_EDGE_NODE_HOST and SLURM_EDGE_NODE_PORT (SSHConnectionResource.host/port)."
            ) from None
        except asyncssh.Error as exc:
            raise SSHConnectionError(f"SSH connection to {host}:{port} failed: {exc.reason}") from None

    async def _connect_with_retries(self, host: str, port: int, kwargs: dict) -> asyncssh.SSHClientConnection:
        """Connect; a connection the server drops during the handshake (sshd's MaxStartups when many
        processes log in at once) is retried with jittered backoff until ``connect_timeout``."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.connect_timeout
        delay, drops = 0.1, 0
        while True:
            try:
                return await asyncio.wait_for(asyncssh.connect(host, **kwargs), self._login_timeout() + 5)
            except (ConnectionResetError, BrokenPipeError, asyncssh.ConnectionLost) as exc:
                drops += 1
                pause = delay * random.uniform(0.5, 1.5)
                if loop.time() + pause > deadline:
                    raise SSHConnectionError(
                        f"{host}:{port} dropped the SSH handshake {drops} times within {s.connect_timeout:g} s "
                        f"(last: {exc}). The server may be refusing logins (sshd MaxStartups, rate limits); "
                        "raise SSHConnectionResource.connect_timeout or try later."
                    ) from None
                log.debug("handshake with %s:%s dropped (%s); retrying in %.2f s", host, port, exc, pause)
                await asyncio.sleep(pause)
                delay = min(delay * 2, 2.0)

    def _host_key_message(self, host: str, port: int, known) -> str:
        s = self.settings
        path = s.known_hosts_file
        name = host if port == 22 else f"[{host}]:{port}"
        if known is not None and known.match(host, "", port)[0]:
            return (
                f"The host key of {name} does not match the one recorded in {path}: it CHANGED. "
                "This may be an attack. If the change is expected, remove the old entry with "
                f"`ssh-keygen -R '{name}' -f {path}` and connect again (SSHConnectionResource.known_hosts_file)."
            )
        return (
            f"The host key of {name} is not in {path} and host_key_checking='{s.host_key_checking}'. "
            f"Verify and add it (`ssh-keyscan -p {port} {host} >> {path}`), point "
            "SSHConnectionResource.known_hosts_file at a file that has it, or set "
            "host_key_checking='accept-new' to trust it on first use."
        )

    def _login_timeout(self) -> float:
        """A person answering prompts (``dagster-slurm login``) gets minutes; a program connect_timeout."""
        return self.settings.connect_timeout if self.ask is None else max(self.settings.connect_timeout, 300.0)

    def login(self) -> None:
        """Connect (and authenticate) now rather than on the first call."""
        try:
            run_sync(self._connection(), self._login_timeout() * 2 + 10)
        except TimeoutError:
            raise SSHConnectionError(f"Logging in to {self._describe()} did not finish in time.") from None

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            if self._closed_for_good:
                raise SSHConnectionError(f"The connection to {self._describe()} was closed for good.")
            if self._refused is not None and time.monotonic() - self._refused[0] < REFUSED_LOGIN_PAUSE:
                raise SSHConnectionError(self._refused[1])  # no burst of failed logins (lockouts, bans)
            s = self.settings
            tunnel = None
            if s.jump_host:
                if self._jump is None or self._jump.is_closed():
                    self._jump = await self._open(s.jump_host, s.jump_port, s.jump_user or s.user, is_target=False)
                tunnel = self._jump
            started = time.monotonic()
            try:
                self._conn = await self._open(s.host, s.port, s.user, tunnel)
            except SSHConnectionError as exc:
                if "authentication failed" in str(exc) or "asks for" in str(exc):
                    self._refused = (time.monotonic(), str(exc))
                raise
            self._refused = None
            self._sftp, self._shells = None, []
            self._count(connections=1)
            log.debug("connected to %s in %.3f s", self._describe(), time.monotonic() - started)
            return self._conn

    async def _with_retry(self, op: Callable[[], Awaitable[T]], retry: bool) -> T:
        try:
            return await op()
        except _LOST:
            self._mark_lost()
            if not retry:
                raise
            log.warning("SSH connection to %s lost; reconnecting", self._describe())
            return await op()

    # ----------------------------------------------------------------- commands
    async def _acquire_shell(self) -> RemoteShell:
        conn = await self._connection()
        while self._shells:
            shell = self._shells.pop()
            if not shell.broken:
                return shell
        shell = await RemoteShell.open(conn)
        self._count(channels=1)
        return shell

    async def _arun(self, command: str, timeout: float) -> tuple[int | None, str, str]:
        shell = await self._acquire_shell()
        try:
            result = await shell.run(command, timeout)
        except ShellBroken:
            if self._conn is not None and not self._conn.is_closed():
                return None, "", f"no answer within {timeout:g} s"  # the shell hung: a timeout
            raise
        self._shells.append(shell)
        return result

    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            retry: bool = False) -> CommandResult:
        """Run ``command`` with ``sh`` on the edge node. ``retry`` replays it once after a dropped
        connection (only for idempotent commands). Raises ``RemoteCommandError`` on non-zero exit."""
        timeout = timeout or self.settings.command_timeout
        started = time.monotonic()
        with self._stats_lock:
            self.stats.log_command(command)
        try:
            status, out, err = run_sync(
                self._with_retry(lambda: self._arun(command, timeout), retry),
                timeout * 2 + self.settings.connect_timeout * 2 + 10,
            )
        except _LOST as exc:
            raise SSHConnectionError(
                f"SSH connection to {self._describe()} lost while running: {command} ({exc})"
            ) from None
        log.debug("ran (%.3f s, status %s): %s", time.monotonic() - started, status, command)
        if check and status != 0:
            raise RemoteCommandError(command, status, err)
        return CommandResult(command, -1 if status is None else status, out, err)

    def open_stream(self, command: str) -> RemoteStream:
        """Start a long-running remote ``command`` on its own channel, to talk to it line by line."""
        async def start() -> asyncssh.SSHClientProcess:
            conn = await self._connection()
            return await conn.create_process(command, encoding="utf-8")

        self._count(channels=1)
        with self._stats_lock:
            self.stats.log_command(command)
        try:
            return RemoteStream(run_sync(start(), self.settings.connect_timeout * 2 + 10))
        except (_LOST + (asyncssh.Error, TimeoutError)) as exc:
            raise SSHConnectionError(f"Could not start a remote stream on {self._describe()}: {exc}") from None

    def run_later(self, command: str) -> None:
        """Run an idempotent clean-up ``command`` off the caller's critical path (errors are logged).
        Pending ones finish before the process exits."""
        with self._stats_lock:
            if self._later is None:
                self._later = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dagster-slurm-later")
            later = self._later

        def job() -> None:
            try:
                self.run(command, check=False, retry=True)
            except Exception as exc:  # noqa: BLE001 - clean-up only: gc removes what is left
                log.warning("clean-up command failed (%s): %s", exc, command)

        later.submit(job)

    # ----------------------------------------------------------------- files (SFTP)
    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        if self._sftp is None:
            self._sftp = await conn.start_sftp_client()
            self._count(channels=1)
        return self._sftp

    def _file_op(self, what: str, path: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
                 timeout: float | None = None, retry: bool = True) -> T:
        """One SFTP operation. ``retry``: replay it once after a lost connection (idempotent ones only)."""
        async def call() -> T:
            return await op(await self._sftp_client())

        self._count(sftp_ops=1)
        try:
            return run_sync(self._with_retry(call, retry), timeout or self.settings.command_timeout)
        except asyncssh.SFTPError as exc:
            raise RemoteFileError(f"{what} {path!r} on {self._describe()} failed: {exc.reason}") from None
        except TimeoutError:
            raise RemoteFileError(f"{what} {path!r} on {self._describe()} got no answer in time") from None
        except _LOST as exc:
            raise SSHConnectionError(
                f"SSH connection to {self._describe()} lost during {what} {path!r}: {exc}"
            ) from None

    def home(self) -> str:
        """Absolute path of the remote home directory (asked once per transport)."""
        if self._home is None:
            self._home = self._file_op("resolve", ".", lambda sftp: sftp.realpath("."))
        return self._home

    def probe(self, command: str, *, check: bool = True) -> str:
        """stdout of a read-only fact-finding command (``uname -m``, ``sbatch --help``), run once per transport."""
        key = (command, check)
        if key not in self._facts:
            self._facts[key] = self.run(command, retry=True, check=check).stdout
        return self._facts[key]

    def absolute(self, path: str) -> str:
        """Resolve ``~``-prefixed or relative paths against the remote home, without a round trip after the first."""
        return absolute_path(self.home, path)

    def mkdir_p(self, path: str) -> None:
        self._file_op("mkdir", path, lambda sftp: sftp.makedirs(path, exist_ok=True))

    def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create one directory; fails (RemoteFileError) if it exists. Atomic: usable as a lock, so never
        replayed after a lost connection (a replay would find its own directory and report 'exists')."""
        self._file_op("mkdir", path, lambda sftp: sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=mode)),
                      retry=False)

    def touch(self, path: str) -> None:
        self._file_op("touch", path, lambda sftp: sftp.utime(path))

    def _stat(self, path: str) -> asyncssh.SFTPAttrs | None:
        async def op(sftp: asyncssh.SFTPClient) -> asyncssh.SFTPAttrs | None:
            try:
                return await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None

        return self._file_op("stat", path, op)

    def stat_mtime(self, path: str) -> float | None:
        attrs = self._stat(path)
        return None if attrs is None else attrs.mtime

    def listdir(self, path: str) -> list[str] | None:
        """Names in a remote directory (None if it does not exist)."""
        async def op(sftp: asyncssh.SFTPClient) -> list[str] | None:
            try:
                return [n for n in await sftp.listdir(path) if n not in (".", "..")]
            except asyncssh.SFTPNoSuchFile:
                return None

        return self._file_op("list", path, op)

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.write_many([(path, data, mode)])

    def write_many(self, files: list[tuple[str, bytes, int]]) -> None:
        """Write several (path, data, mode) files concurrently: one round trip's time, not one per file."""
        async def one(sftp: asyncssh.SFTPClient, path: str, data: bytes, mode: int) -> None:
            attrs = asyncssh.SFTPAttrs(permissions=mode)
            async with sftp.open(path, "wb", attrs) as fh:
                await fh.write(data)
            await sftp.chmod(path, mode)  # the umask may have narrowed the create mode

        async def op(sftp: asyncssh.SFTPClient) -> None:
            await asyncio.gather(*(one(sftp, p, d, m) for p, d, m in files))

        self._file_op("write", ", ".join(p for p, _, _ in files), op)
        self._count(bytes_uploaded=sum(len(d) for _, d, _ in files))

    def put_file(self, local: str, remote: str, *, progress: ProgressCallback | None = None,
                 mode: int | None = None) -> None:
        """Upload ``local``; the remote file gets ``mode`` (default: the local file's mode bits)."""
        size = os.path.getsize(local)

        def handler(_src, _dst, done: int, total: int) -> None:
            if progress:
                progress(done, total)

        if mode is None:
            mode = os.stat(local).st_mode & 0o777

        async def op(sftp: asyncssh.SFTPClient) -> None:
            # the local mode bits, but not the local mtime: gc's grace period counts from the upload
            await sftp.put(local, remote, progress_handler=handler)
            await sftp.chmod(remote, mode)

        self._file_op("upload to", remote, op, timeout=max(self.settings.command_timeout, size / 1e6))  # >= 1 MB/s
        self._count(bytes_uploaded=size)

    def read_from(self, path: str, offset: int = 0, size: int = 1 << 20) -> bytes | None:
        """Up to ``size`` bytes of ``path`` from ``offset``; None if the file does not exist."""
        return self.read_many([(path, offset)], size)[0]

    def read_many(self, requests: list[tuple[str, int]], size: int = 1 << 20) -> list[bytes | None]:
        """Read several files from given offsets concurrently, in one round trip's time."""
        async def one(sftp: asyncssh.SFTPClient, path: str, offset: int) -> bytes | None:
            try:
                async with sftp.open(path, "rb") as fh:
                    data = await fh.read(size, offset)
                    return data if isinstance(data, bytes) else data.encode()
            except asyncssh.SFTPNoSuchFile:
                return None

        async def op(sftp: asyncssh.SFTPClient) -> list[bytes | None]:
            return list(await asyncio.gather(*(one(sftp, p, o) for p, o in requests)))

        return self._file_op("read", ", ".join(p for p, _ in requests), op)

    def stat_size(self, path: str) -> int | None:
        """Size of ``path`` (following links), or None if it does not exist."""
        attrs = self._stat(path)
        return None if attrs is None else attrs.size

    def rename(self, src: str, dst: str) -> None:
        self._file_op("rename", src, lambda sftp: sftp.posix_rename(src, dst), retry=False)

    def remove(self, path: str) -> None:
        self.run(remove_command(path), retry=True)

    def close(self, *, final: bool = False) -> None:
        """Close the connection; the next call reconnects, unless ``final`` (the agent leaving)."""
        self._closed_for_good = self._closed_for_good or final
        if self._later is not None:
            self._later.shutdown(wait=True)  # pending clean-ups first
            self._later = None

        async def op() -> None:
            self._mark_lost()  # closes the shells and the connection
            if self._jump is not None:
                self._jump.close()
                self._jump = None

        try:
            run_sync(op(), 5)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


class RemoteStream:
    """A remote process on one channel: send it lines, read its lines (``readline`` returns None on
    timeout and "" once the process or the connection ended)."""

    def __init__(self, process: asyncssh.SSHClientProcess):
        self._process = process

    def send(self, text: str) -> None:
        async def write() -> None:
            self._process.stdin.write(text)

        run_sync(write(), 10)

    def readline(self, timeout: float) -> str | None:
        async def read() -> str | None:
            try:
                return await asyncio.wait_for(self._process.stdout.readline(), timeout)
            except asyncio.TimeoutError:
                return None
            except (asyncssh.Error, OSError, BrokenPipeError):
                return ""

        return run_sync(read(), timeout + 10)

    def close(self) -> None:
        async def close() -> None:
            self._process.close()

        try:
            run_sync(close(), 5)
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass


_pool_lock = threading.Lock()
_pool: dict[SSHSettings, SSHTransport] = {}


def get_transport(settings: SSHSettings) -> SSHTransport:
    """The process-wide direct transport for exactly these settings: one SSH connection per process and
    settings (``agent.sessions`` decides whether a process uses it or the shared agent)."""
    with _pool_lock:
        transport = _pool.get(settings)
        if transport is None:
            transport = _pool[settings] = SSHTransport(settings)
        return transport


def close_all_transports() -> None:
    """Close every connection of this process (also run at interpreter exit)."""
    with _pool_lock:
        for transport in _pool.values():
            transport.close()
        _pool.clear()


atexit.register(close_all_transports)
