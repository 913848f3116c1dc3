"""SSH connection settings: the Dagster resource and the plain settings the transport consumes."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown
from dagster_slurm.errors import ConfigurationError

HostKeyChecking = Literal["strict", "accept-new", "off"]
ShareConnection = Literal["auto", "agent", "direct"]

ENV_PREFIX = "SLURM_EDGE_NODE_"


def check_one_secret(key_path: str | None, password: str | None) -> None:
    """The one rule: a key or a password, not both."""
    if key_path and password:
        raise ConfigurationError(
            "SSHConnectionResource: both key_path and password are set "
            f"({ENV_PREFIX}KEY_PATH and {ENV_PREFIX}PASSWORD); set only one of them."
        )


@dataclass(frozen=True)
class SSHSettings:
    """Resolved, validated connection settings. ``password`` is never printed (see ``__repr__``)."""

    host: str
    port: int = 22
    user: str | None = None
    key_path: str | None = None
    password: str | None = None
    key_passphrase: str | None = None
    jump_host: str | None = None
    jump_user: str | None = None
    jump_port: int = 22
    host_key_checking: HostKeyChecking = "strict"
    known_hosts_file: str | None = None
    connect_timeout: float = 15.0
    command_timeout: float = 120.0
    keepalive_interval: float = 30.0
    share_connection: ShareConnection = "auto"
    agent_idle_timeout: float = 600.0
    otp_command: str | None = None  # may hold a secret: never printed, never part of the agent's name

    def __post_init__(self) -> None:
        check_one_secret(self.key_path, self.password)

    def __repr__(self) -> str:
        auth = "password" if self.password else ("key " + self.key_path if self.key_path else "agent/default keys")
        jump = f" via {self.jump_user or self.user}@{self.jump_host}:{self.jump_port}" if self.jump_host else ""
        return f"SSHSettings({self.user}@{self.host}:{self.port}{jump}, auth={auth}, host keys={self.host_key_checking})"

    __str__ = __repr__


class SSHConnectionResource(dg.ConfigurableResource):
    """How to reach the cluster's edge (login) node over SSH.

    By default (``share_connection="auto"``) every process of this machine and user with the same
    settings shares one SSH login, held by a small background agent (see ``dagster-slurm agent
    status``); commands, uploads and reads travel as channels over it. Host keys are checked against
    ``known_hosts_file`` by default. A login node that asks for a one-time code: run
    ``dagster-slurm login`` once in a terminal, or set ``otp_command``.

    Example::

        ssh = SSHConnectionResource(host="login.hpc.example.org", user="alice",
                                    key_path="~/.ssh/id_ed25519")
        ssh = SSHConnectionResource.from_env()   # reads SLURM_EDGE_NODE_*
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)


    host: str = Field(description="Hostname or IP of the edge/login node.")
    port: int = Field(default=22, description="SSH port of the edge node.")
    user: str | None = Field(
        default=None, description="Login user. Default: from ~/.ssh/config, else the local user name."
    )
    key_path: str | None = Field(
        default=None,
        description="Private key file (``~`` is expanded). Mutually exclusive with ``password``. "
        "With neither set, ssh-agent and the default keys (~/.ssh/id_*) are used.",
    )
    key_passphrase: str | None = Field(
        default=None,
        repr=False,
        description="Passphrase of an encrypted key_path. Use dg.EnvVar('SLURM_EDGE_NODE_KEY_PASSPHRASE'); "
        "it never appears in logs or errors.",
    )
    password: str | None = Field(
        default=None,
        repr=False,
        description="Password for password authentication. Prefer dg.EnvVar('SLURM_EDGE_NODE_PASSWORD'). "
        "Mutually exclusive with ``key_path``.",
    )
    jump_host: str | None = Field(default=None, description="Optional jump (bastion) host, one hop.")
    jump_user: str | None = Field(default=None, description="User on the jump host. Default: ``user``.")
    jump_port: int = Field(default=22, description="SSH port of the jump host.")
    host_key_checking: HostKeyChecking = Field(
        default="strict",
        description="'strict': the host key must be in known_hosts. 'accept-new': trust and record an "
        "unknown host on first use, refuse a changed key. 'off': no checking (insecure).",
    )
    known_hosts_file: str | None = Field(
        default=None, description="known_hosts file to check against. Default: ~/.ssh/known_hosts."
    )
    connect_timeout: float = Field(
        default=15.0, description="Seconds to wait for the TCP connection and login before failing."
    )
    command_timeout: float = Field(
        default=120.0, description="Default bound, in seconds, for any single remote command."
    )

    share_connection: ShareConnection = Field(
        default="auto",
        description="'auto': share one login per machine through the connection agent (started on first "
        "use; falls back to a direct connection with a warning if it cannot start). 'agent': require the "
        "agent. 'direct': one connection per process, no agent.",
    )
    agent_idle_timeout: float = Field(
        default=600.0, description="Seconds the connection agent stays after its last request (like ControlPersist)."
    )
    otp_command: str | None = Field(
        default=None,
        repr=False,
        description="Command printing a one-time code for keyboard-interactive logins, run without a shell, e.g. a "
        "script of yours doing `oathtool --totp -b - < ~/.otp-seed` (a seed given in the command line would be "
        "visible to other users in `ps`). Whoever can read the seed holds your second factor: prefer "
        "`dagster-slurm login`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _warn_about_literal_secrets(cls, data: Any) -> Any:
        """A secret written into code ends up in version control and in Dagster's run config. Values
        given as dg.EnvVar, or read from the environment, are fine; the value itself is never shown."""
        if isinstance(data, dict):
            for name, var in (("password", "PASSWORD"), ("key_passphrase", "KEY_PASSPHRASE"),
                              ("otp_command", "OTP_COMMAND")):
                value = data.get(name)
                if isinstance(value, str) and not isinstance(value, dg.EnvVar) and value \
                        and value not in os.environ.values():
                    warnings.warn(
                        f"SSHConnectionResource.{name} is a literal string in code. Pass "
                        f"dg.EnvVar('{ENV_PREFIX}{var}') (or use SSHConnectionResource.from_env()) so the "
                        "secret stays out of your code and Dagster's run config.", UserWarning, stacklevel=2)
        return data

    @classmethod
    def from_env(cls, prefix: str = ENV_PREFIX, **overrides) -> SSHConnectionResource:
        """Build the resource from ``SLURM_EDGE_NODE_{HOST,PORT,USER,KEY_PATH,KEY_PASSPHRASE,PASSWORD}``,
        ``SLURM_EDGE_NODE_{JUMP_HOST,JUMP_USER,JUMP_PORT}``, ``SLURM_EDGE_NODE_{KNOWN_HOSTS,
        HOST_KEY_CHECKING}`` and ``SLURM_EDGE_NODE_{SHARE_CONNECTION,AGENT_IDLE_TIMEOUT,OTP_COMMAND}``. Keyword arguments override them."""
        env = os.environ
        if prefix and not prefix.endswith("_"):
            prefix += "_"  # from_env(prefix="SLURM_EDGE_NODE") as the other dagster-slurm spells it
        host = env.get(prefix + "HOST")
        if not host and "host" not in overrides:
            raise ConfigurationError(
                f"{prefix}HOST is not set: export it to the hostname of the cluster's edge/login node."
            )
        key, password = env.get(prefix + "KEY_PATH"), env.get(prefix + "PASSWORD")
        if key and password:
            raise ConfigurationError(
                f"Both {prefix}KEY_PATH and {prefix}PASSWORD are set: unset one of them "
                "(key authentication is recommended)."
            )
        kwargs: dict = {"host": host}
        for name, var, conv in (
            ("port", "PORT", int),
            ("user", "USER", str),
            ("key_path", "KEY_PATH", str),
            ("jump_host", "JUMP_HOST", str),
            ("jump_user", "JUMP_USER", str),
            ("jump_port", "JUMP_PORT", int),
            ("known_hosts_file", "KNOWN_HOSTS", str),
            ("host_key_checking", "HOST_KEY_CHECKING", str),
            ("share_connection", "SHARE_CONNECTION", str),
            ("agent_idle_timeout", "AGENT_IDLE_TIMEOUT", float),
        ):
            raw = env.get(prefix + var)
            if var == "KNOWN_HOSTS":  # the other dagster-slurm's spelling counts too; ours wins
                raw = _either(prefix + var, prefix + "KNOWN_HOSTS_FILE")
            if raw:
                try:
                    kwargs[name] = conv(raw)
                except ValueError:
                    raise ConfigurationError(f"{prefix}{var}={raw!r} is not a valid {conv.__name__}.") from None
        if password:
            kwargs["password"] = dg.EnvVar(prefix + "PASSWORD")
        if env.get(prefix + "KEY_PASSPHRASE"):
            kwargs["key_passphrase"] = dg.EnvVar(prefix + "KEY_PASSPHRASE")
        if env.get(prefix + "OTP_COMMAND"):
            kwargs["otp_command"] = dg.EnvVar(prefix + "OTP_COMMAND")
        kwargs.update(overrides)
        return cls(**kwargs)

    def settings(self) -> SSHSettings:
        """Validate and resolve into the plain settings the transport uses."""
        check_one_secret(self.key_path, self.password)
        key_path = os.path.expanduser(self.key_path) if self.key_path else None
        if key_path and not os.path.isfile(key_path):
            raise ConfigurationError(
                f"SSHConnectionResource.key_path: no private key file at {key_path!r} "
                f"({ENV_PREFIX}KEY_PATH). Point it at an existing key."
            )
        if key_path and os.name == "posix" and os.stat(key_path).st_mode & 0o077:
            raise ConfigurationError(
                f"SSHConnectionResource.key_path: the private key {key_path!r} is readable by other users "
                f"(mode {os.stat(key_path).st_mode & 0o777:o}); OpenSSH refuses such keys and so do we. "
                f"Fix it with `chmod 600 {key_path}`."
            )
        known_hosts = os.path.expanduser(self.known_hosts_file or "~/.ssh/known_hosts")
        return SSHSettings(
            host=self.host,
            port=self.port,
            user=self.user,
            key_path=key_path,
            password=self.password,
            key_passphrase=self.key_passphrase,
            jump_host=self.jump_host,
            jump_user=self.jump_user,
            jump_port=self.jump_port,
            host_key_checking=self.host_key_checking,
            known_hosts_file=known_hosts,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            share_connection=self.share_connection,
            agent_idle_timeout=self.agent_idle_timeout,
            otp_command=self.otp_command,
        )


def _either(ours: str, theirs: str) -> str | None:
    """The value of environment variable ``ours``, else ``theirs`` (the other dagster-slurm's name)."""
    import logging

    if os.environ.get(ours) and os.environ.get(theirs):
        logging.getLogger("dagster_slurm.config").debug("%s and %s are both set; using %s", ours, theirs, ours)
    return os.environ.get(ours) or os.environ.get(theirs)
