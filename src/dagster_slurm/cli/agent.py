"""``dagster-slurm login`` and ``dagster-slurm agent status|stop``."""

from __future__ import annotations

import dataclasses
import getpass
import glob
import os
import sys
import time

from dagster_slurm.agent import protocol
from dagster_slurm.agent.spawn import absent, ensure_agent, hello, paths, request
from dagster_slurm.config.ssh import SSHConnectionResource, SSHSettings
from dagster_slurm.errors import ConfigurationError


def _ask(name: str, instructions: str, prompts: list) -> list[str] | None:
    """Relay the server's prompts to this terminal; nothing typed is stored."""
    for text in (name, instructions):
        if text:
            print(text, file=sys.stderr)
    answers = []
    for prompt, echo in prompts:
        if not sys.stdin.isatty():
            print(prompt, end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return None
            answers.append(line.rstrip("\n"))
        else:
            answers.append(input(prompt) if echo else getpass.getpass(prompt))
    return answers


def _with_passphrase(settings: SSHSettings) -> SSHSettings:
    """An encrypted key without a configured passphrase: ask for it here (it goes to the agent only)."""
    if not settings.key_path or settings.key_passphrase:
        return settings
    import asyncssh

    try:
        asyncssh.read_private_key(settings.key_path)
        return settings
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
        answer = _ask("", "", [(f"Passphrase for {settings.key_path}: ", False)])
        return dataclasses.replace(settings, key_passphrase=(answer or [""])[0])


def _call(path: str, op: str) -> dict:
    answer = request(path, op)
    if "error" in answer:
        raise protocol.error_from_wire(answer["error"])
    return answer["ok"]


def run_login(args) -> None:
    settings = SSHConnectionResource.from_env().settings()
    if settings.share_connection == "direct":
        raise ConfigurationError("SLURM_EDGE_NODE_SHARE_CONNECTION=direct: a login is shared through the "
                                 "connection agent only; unset it (default 'auto') to use `dagster-slurm login`.")
    if args.idle_timeout is not None:
        settings = dataclasses.replace(settings, agent_idle_timeout=args.idle_timeout)
    sock_path = paths(settings)[0]
    try:
        status = _call(sock_path, "status")
    except (OSError, protocol.AgentGone):
        status = None
    if status is not None and status["connected"] and not args.force:
        print(f"Already logged in: agent {status['pid']} holds {status['target']} since "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(status['started']))} "
              "(`dagster-slurm login --force` logs in again).")
        if args.idle_timeout is not None and args.idle_timeout != status["idle_timeout"]:
            print(f"Its idle timeout stays {status['idle_timeout']:g} s; `dagster-slurm login --force "
                  f"--idle-timeout {args.idle_timeout:g}s` restarts it with yours.")
        return
    if status is not None:
        _stop(sock_path)
    ensure_agent(_with_passphrase(settings), ask=_ask)
    status = _call(sock_path, "status")
    print(f"Logged in to {status['target']}: agent {status['pid']} shares this login with every run on this "
          f"machine until it has been idle for {status['idle_timeout']:g} s.")


def _stop(path: str) -> None:
    try:
        _call(path, "stop")
    except (OSError, protocol.AgentGone):
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            hello(path, 1)
        except (OSError, protocol.AgentGone):
            return
        time.sleep(0.05)


def _recent_warnings(log_path: str, keep: int = 3) -> list[str]:
    try:
        with open(log_path, errors="replace") as fh:
            lines = fh.readlines()[-200:]
    except OSError:
        return []
    return [line.rstrip() for line in lines if " WARNING " in line or " ERROR " in line][-keep:]


def _sockets() -> list[str]:
    return sorted(glob.glob(os.path.join(protocol.runtime_dir(), "v*.sock")))


def run_agent(args) -> None:
    sockets = _sockets()
    if not sockets:
        print(f"No connection agent runs for this user (folder {protocol.runtime_dir()}).")
        return
    for path in sockets:
        try:
            status = _call(path, "status")
        except OSError as exc:
            if absent(exc):
                os.unlink(path)
                print(f"{os.path.basename(path)}: no agent listens (left by one that was killed); removed.")
            else:
                print(f"{os.path.basename(path)}: the agent does not answer ({exc}); it may be overloaded. Its log: "
                      f"{path[: -len('.sock')]}.log")
            continue
        except protocol.AgentGone as exc:
            print(f"{os.path.basename(path)}: the agent closed the connection ({exc}).")
            continue
        if args.agent_command == "stop":
            _stop(path)
            print(f"Stopped agent {status['pid']} ({status['target']}).")
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["started"]))
        print(f"agent {status['pid']} -> {status['target']}\n"
              f"  since {since}, {'connected' if status['connected'] else 'NOT connected'}, "
              f"SSH logins {status['ssh_logins']}, idle {status['idle_for']:g} s of {status['idle_timeout']:g} s\n"
              f"  clients now {status['clients_now']} (total {status['clients_total']}), requests "
              f"{status['requests']}, jobs watched now {status['jobs_watched_now']} "
              f"(total {status['jobs_watched_total']}), squeue polls {status['squeue_ticks']}\n"
              f"  socket {status['socket']}")
        if not status["connected"]:
            print("  advice: its SSH connection is down; the next request logs in again. If the login node "
                  "asks for a one-time code, run `dagster-slurm login`.")
        warnings = _recent_warnings(path[: -len(".sock")] + ".log")
        if warnings:
            print("  recent warnings (its log: " + path[: -len(".sock")] + ".log):")
            for line in warnings:
                print("    " + line)
