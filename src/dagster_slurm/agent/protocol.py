"""The agent's wire format and where agents live.

Frames are a 4-byte big-endian length and a UTF-8 JSON object. A request is
``{"op": name, "args": {...}}``; the answer ``{"ok": value}`` or ``{"error": {"type", "message", ...}}``.
Bytes travel base64-encoded. One request at a time per socket connection; clients keep a small pool.
The protocol version is part of the socket's name, so a client never talks to an agent of another version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
from dataclasses import asdict

from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import (
    ConfigurationError,
    DagsterSlurmError,
    RemoteCommandError,
    RemoteFileError,
    SSHConnectionError,
)

VERSION = 1
MAX_FRAME = 64 << 20
_HEADER = struct.Struct(">I")
SECRET_FIELDS = ("password", "key_passphrase", "otp_command")
RUNTIME_DIR_ENV = "DAGSTER_SLURM_RUNTIME_DIR"


class AgentUnavailable(Exception):
    """The agent could not be started or reached (the reason is the message); not a login failure."""


class AgentGone(Exception):
    """The agent's socket closed in the middle of a request."""


# ------------------------------------------------------------------------------ framing
def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise AgentGone(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return length


def send(sock: socket.socket, message: dict) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise AgentGone("the agent closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> dict:
    return json.loads(_recv_exact(sock, decode_length(_recv_exact(sock, _HEADER.size))))


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def stamp(snapshot: dict) -> str:
    """What a client knows of a watched job; the agent answers a long poll when it differs."""
    return f"{snapshot['state']}|{snapshot['reason']}|{snapshot.get('start')}|{snapshot['done']}|{snapshot.get('exited')}"


# ------------------------------------------------------------------------------ errors across the socket
_ERRORS: dict[str, type[DagsterSlurmError]] = {
    cls.__name__: cls for cls in (DagsterSlurmError, ConfigurationError, SSHConnectionError, RemoteFileError)
}


def error_to_wire(exc: BaseException) -> dict:
    if isinstance(exc, RemoteCommandError):
        return {"type": "RemoteCommandError", "command": exc.command, "exit_status": exc.exit_status,
                "stderr": exc.stderr_tail, "message": str(exc)}
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "DagsterSlurmError"
    message = str(exc) if isinstance(exc, DagsterSlurmError) else f"{type(exc).__name__}: {exc}"
    return {"type": name, "message": message}


def error_from_wire(error: dict) -> DagsterSlurmError:
    if error.get("type") == "RemoteCommandError":
        return RemoteCommandError(error["command"], error["exit_status"], error.get("stderr", ""))
    return _ERRORS.get(error.get("type", ""), DagsterSlurmError)(error.get("message", "agent error"))


# ------------------------------------------------------------------------------ settings and places
def settings_to_wire(settings: SSHSettings) -> dict:
    return asdict(settings)


def settings_from_wire(data: dict) -> SSHSettings:
    return SSHSettings(**data)


_NOT_IN_NAME = SECRET_FIELDS + ("share_connection", "agent_idle_timeout")
_code: list[str] = []


def code_digest() -> str:
    """A hash of this library's code: an agent only serves clients of exactly its own code."""
    if not _code:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        h = hashlib.sha256()
        for folder, _dirs, files in sorted(os.walk(root)):
            for name in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(folder, name), "rb") as fh:
                    h.update(name.encode() + fh.read())
        _code.append(h.hexdigest()[:8])
    return _code[0]


def agent_name(settings: SSHSettings) -> str:
    """Which agent serves these settings: a hash of the connection settings (not the secrets, not
    how long the agent stays) and of the library's code."""
    public = {k: v for k, v in asdict(settings).items() if k not in _NOT_IN_NAME}
    digest = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:12]
    return f"v{VERSION}-{digest}-{code_digest()}"


def runtime_dir(create: bool = True) -> str:
    """The per-user folder of agent sockets, logs and locks: 0700 and ours, or we refuse to use it."""
    base = os.environ.get(RUNTIME_DIR_ENV)
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(xdg, "dagster-slurm") if xdg and os.path.isdir(xdg) else f"/tmp/dagster-slurm-{os.getuid()}"
    if create:
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise AgentUnavailable(f"cannot create the agent folder {base}: {exc.strerror}") from None
    if os.path.isdir(base):
        st = os.lstat(base)
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(base) or os.path.islink(base):
            raise AgentUnavailable(
                f"the agent folder {base} is not a private folder of this user (owner uid {st.st_uid}, "
                f"mode {st.st_mode & 0o777:o}); remove it or set {RUNTIME_DIR_ENV} to a 0700 folder of yours")
    return base


def socket_path(settings: SSHSettings) -> str:
    return os.path.join(runtime_dir(), agent_name(settings) + ".sock")
