"""A long-lived remote ``sh`` on one SSH channel that runs many commands in turn.

Each command is sent as ``( eval 'cmd' ) </dev/null`` followed by end markers carrying a
per-shell nonce and the exit status, on stdout and on stderr. A polling loop therefore costs one
channel per process instead of one channel per poll.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex

import asyncssh


class ShellBroken(Exception):
    """The shell channel died or timed out; it must not be reused."""


class RemoteShell:
    def __init__(self, process: asyncssh.SSHClientProcess):
        self._process = process
        self._nonce = secrets.token_hex(8)
        self.broken = False

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection) -> RemoteShell:
        process = await conn.create_process("exec /bin/sh", encoding=None)
        return cls(process)

    async def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        marker = f"__DAGSTER_SLURM_END_{self._nonce}"
        script = (
            f"( eval {shlex.quote(command)} ) </dev/null; __ds_rc=$?; "
            f"printf '\\n%s %d\\n' '{marker}' \"$__ds_rc\"; printf '\\n%s\\n' '{marker}' >&2\n"
        )
        try:
            self._process.stdin.write(script.encode())
            out, err = await asyncio.wait_for(
                asyncio.gather(
                    self._process.stdout.readuntil(f"\n{marker} ".encode()),
                    self._process.stderr.readuntil(f"\n{marker}\n".encode()),
                ),
                timeout,
            )
            status_line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncssh.Error, OSError,
                BrokenPipeError) as exc:
            self.close()
            raise ShellBroken(str(exc) or type(exc).__name__) from exc
        out_text = out[: -len(marker) - 2].decode(errors="replace")
        err_text = err[: -len(marker) - 2].decode(errors="replace")
        return int(status_line.strip() or 255), out_text, err_text

    def close(self) -> None:
        self.broken = True
        try:
            self._process.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass
