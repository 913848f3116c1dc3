"""The transport interface the upper layers depend on, and its result and counter types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

ProgressCallback = Callable[[int, int], None]  # (bytes_done, bytes_total)


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str


@dataclass
class TransportStats:
    """Counters of what went over the wire, for benchmarks and manners checks."""

    connections: int = 0
    channels: int = 0  # SSH channels opened (shell sessions + SFTP subsystems)
    commands: int = 0  # remote commands run (each may reuse an open shell channel)
    sftp_ops: int = 0
    bytes_uploaded: int = 0
    command_log: list[str] = field(default_factory=list)  # the most recent LOG_KEEP commands

    LOG_KEEP = 1000

    def snapshot(self) -> TransportStats:
        return TransportStats(
            self.connections, self.channels, self.commands, self.sftp_ops, self.bytes_uploaded,
            list(self.command_log),
        )

    def since(self, before: TransportStats) -> TransportStats:
        return TransportStats(
            self.connections - before.connections,
            self.channels - before.channels,
            self.commands - before.commands,
            self.sftp_ops - before.sftp_ops,
            self.bytes_uploaded - before.bytes_uploaded,
            self.command_log[len(self.command_log) - (self.commands - before.commands):]
            if self.commands > before.commands else [],
        )

    def log_command(self, command: str) -> None:
        self.commands += 1
        self.command_log.append(command)
        if len(self.command_log) > 2 * self.LOG_KEEP:
            del self.command_log[: -self.LOG_KEEP]


def absolute_path(home: Callable[[], str], path: str) -> str:
    """``path`` resolved against the remote home (``~``, ``$HOME``/``${HOME}``-prefixed, or relative); ``home``
    is asked only then. Other ``$`` expressions are refused: nothing here runs a shell to expand them."""
    for prefix in ("$HOME", "${HOME}", "~"):
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix) + 1:]
            break
    if "$" in path:
        from dagster_slurm.errors import ConfigurationError

        raise ConfigurationError(
            f"The remote path {path!r} holds a shell variable; only a leading ~ or $HOME is expanded (on the "
            "cluster). Write the path out (e.g. /scratch/alice/dagster) or relative to the home directory."
        )
    return path if path.startswith("/") else f"{home().rstrip('/')}/{path}".rstrip("/")


def remove_command(path: str) -> str:
    import shlex

    return f"rm -rf -- {shlex.quote(path)}"


class Transport(Protocol):
    """Run commands and move files on the cluster. Implemented over SSH by ``SSHTransport``.

    Paths may be absolute or relative to the remote home directory. ``run`` raises
    ``RemoteCommandError`` (command, exit status, stderr tail) unless ``check=False``.
    """

    stats: TransportStats

    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            retry: bool = False) -> CommandResult: ...

    def run_later(self, command: str) -> None: ...

    def home(self) -> str: ...

    def probe(self, command: str, *, check: bool = True) -> str: ...

    def absolute(self, path: str) -> str: ...

    def mkdir_p(self, path: str) -> None: ...

    def mkdir(self, path: str, *, mode: int = 0o755) -> None: ...

    def touch(self, path: str) -> None: ...

    def stat_mtime(self, path: str) -> float | None: ...

    def listdir(self, path: str) -> list[str] | None: ...

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None: ...

    def write_many(self, files: list[tuple[str, bytes, int]]) -> None: ...

    def put_file(self, local: str, remote: str, *, progress: ProgressCallback | None = None,
                 mode: int | None = None) -> None: ...

    def read_from(self, path: str, offset: int = 0, size: int = 1 << 20) -> bytes | None: ...

    def read_many(self, requests: list[tuple[str, int]], size: int = 1 << 20) -> list[bytes | None]: ...

    def stat_size(self, path: str) -> int | None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...
