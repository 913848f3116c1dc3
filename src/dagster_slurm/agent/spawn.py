"""Find the agent for some settings, or start it: exactly one per user, machine and settings, even
when a hundred processes ask at once (a file lock around the start)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from filelock import FileLock, Timeout

from dagster_slurm.agent import protocol
from dagster_slurm.agent.protocol import AgentGone, AgentUnavailable, agent_name, runtime_dir
from dagster_slurm.config.ssh import SSHSettings

# (name, instructions, [(prompt, echo)]) -> answers, or None to give up
SyncAsk = Callable[[str, str, list], "list[str] | None"]
LOG_KEEP_BYTES = 1 << 20
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def paths(settings: SSHSettings) -> tuple[str, str, str]:
    """(socket, log, start lock) of the agent for ``settings``."""
    base = os.path.join(runtime_dir(), agent_name(settings))
    return base + ".sock", base + ".log", base + ".lock"


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def request(path: str, op: str, timeout: float = 5.0) -> dict:
    """One argument-less request on a connection of its own (hello, status, stop): the raw answer."""
    sock = connect(path, timeout)
    try:
        protocol.send(sock, {"op": op, "args": {}})
        return protocol.receive(sock)
    finally:
        sock.close()


def hello(path: str, timeout: float = 5.0) -> dict:
    """The agent's pid and protocol version; raises OSError/AgentGone when none answers there."""
    answer = request(path, "hello", timeout)
    if "error" in answer:
        raise AgentGone(answer["error"].get("message", "refused"))
    return answer["ok"]


def absent(exc: BaseException) -> bool:
    """Whether a failed connect means that no agent listens there (so one may be started in its place).
    A busy agent (full backlog, slow answer) is not absent: replacing it would cut its calls short."""
    return isinstance(exc, (FileNotFoundError, ConnectionRefusedError))


def agent_answers(path: str, bound: float) -> bool:
    """True when an agent answers at ``path``; False when none listens; waits out a busy one up to ``bound``."""
    deadline = time.monotonic() + bound
    delay = 0.05
    while True:
        try:
            hello(path)
            return True
        except OSError as exc:
            if absent(exc):
                return False
            if time.monotonic() + delay > deadline:
                raise AgentUnavailable(f"the agent at {path} does not answer ({exc}); "
                                       "`dagster-slurm agent status` shows it") from None
        except AgentGone:
            if time.monotonic() + delay > deadline:
                raise AgentUnavailable(f"the agent at {path} closes connections without answering") from None
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def ensure_agent(settings: SSHSettings, ask: SyncAsk | None = None) -> str:
    """The socket path of a running agent for ``settings``, started now if there is none.

    Raises ``AgentUnavailable`` when no agent can run here, and the login's own error (e.g.
    ``SSHConnectionError``) when the agent could not log in."""
    sock_path, _log, lock_path = paths(settings)
    bound = settings.connect_timeout + 10
    if agent_answers(sock_path, bound):
        return sock_path
    try:
        with FileLock(lock_path, timeout=settings.connect_timeout * 2 + 60):
            if agent_answers(sock_path, bound):
                return sock_path  # another process started it while we waited for the lock
            start_agent(settings, ask)
    except Timeout:
        raise AgentUnavailable(f"another process has been starting the agent for too long (lock {lock_path})") \
            from None
    if not agent_answers(sock_path, bound):
        raise AgentUnavailable(f"the agent started but does not answer at {sock_path}")
    return sock_path


def start_agent(settings: SSHSettings, ask: SyncAsk | None = None) -> dict:
    """Start the agent and wait until it has logged in and listens; the caller holds the start lock."""
    sock_path, log_path, _lock = paths(settings)
    if os.path.exists(log_path) and os.path.getsize(log_path) > LOG_KEEP_BYTES:
        os.replace(log_path, log_path + ".1")  # one previous log is kept
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SOURCE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster_slurm.agent.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=fd, start_new_session=True, close_fds=True, cwd="/", env=env)
    except OSError as exc:
        raise AgentUnavailable(f"could not start {sys.executable} for the agent: {exc.strerror}") from None
    finally:
        os.close(fd)
    assert process.stdin is not None and process.stdout is not None
    start = {"settings": protocol.settings_to_wire(settings), "socket": sock_path, "interactive": ask is not None}
    try:
        process.stdin.write((json.dumps(start) + "\n").encode())
        process.stdin.flush()
        return _await_ready(process, settings, ask, log_path)
    finally:
        process.stdin.close()
        process.stdout.close()


def _await_ready(process: subprocess.Popen, settings: SSHSettings, ask: SyncAsk | None, log_path: str) -> dict:
    assert process.stdin is not None and process.stdout is not None
    bound = settings.connect_timeout * 2 + 30
    deadline = time.monotonic() + bound
    buffer = b""
    fd = process.stdout.fileno()
    while True:
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise AgentUnavailable(f"the agent did not log in within {bound:g} s (its log: {log_path})")
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                status = process.wait(10)
                raise AgentUnavailable(f"the agent exited with status {status} before it was ready "
                                       f"(its log: {log_path}): {_tail(log_path)}")
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        message = json.loads(line)
        if "ready" in message:
            return message["ready"]
        if "error" in message:
            process.wait(10)
            raise protocol.error_from_wire(message["error"])
        if "prompt" in message:
            p = message["prompt"]
            answers = ask(p["name"], p["instructions"], [tuple(x) for x in p["prompts"]]) if ask else None
            process.stdin.write((json.dumps({"answers": answers}) + "\n").encode())
            process.stdin.flush()
            deadline = time.monotonic() + bound  # time spent typing does not count


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-3:]).strip()
    except OSError:
        return ""
