"""Faults injected for real, found the way each release names its processes, and proven to have happened."""

import subprocess

# The processes that serve one SSH connection: "sshd" up to OpenSSH 9.7 (Debian 12: 9.2); from 9.8 on
# (Debian 13: 10.0, forky: 10.6) each connection runs in "sshd-session" while "sshd" only listens.
SSHD_CONNECTION = "sshd(-session)?"


def cut_ssh_connections(user: str = "slurmuser") -> int:
    """kill -9 every process serving ``user``'s SSH connections (never the listener, which runs as root).
    Returns how many were killed: a test asserts it is > 0 before it asserts the recovery."""
    pids = subprocess.run(["pgrep", "-u", user, "-x", SSHD_CONNECTION], capture_output=True, text=True).stdout.split()
    subprocess.run(["kill", "-KILL", *pids], capture_output=True, check=False) if pids else None
    return len(pids)
