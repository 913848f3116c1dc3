"""Exceptions raised by dagster-slurm.

Every error says what was tried, what came back, and which setting to change.
They derive from :class:`dagster.Failure` where they end a step, so Dagster shows
the description rather than a bare traceback.
"""

from __future__ import annotations

import dagster as dg


class DagsterSlurmError(dg.Failure):
    """Base class for every error dagster-slurm raises on purpose."""

    retriable = True  # whether a Dagster RetryPolicy may retry the step after this error

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata or {}, allow_retries=self.retriable)

    def __str__(self) -> str:  # Failure's str is empty without this
        return self.description or ""


class ConfigurationError(DagsterSlurmError, ValueError):
    """A setting is missing, contradictory or invalid. The message names the setting and the fix.
    Retrying cannot help, so a RetryPolicy does not retry it."""

    retriable = False


class SSHConnectionError(DagsterSlurmError):
    """The SSH connection could not be opened or authenticated."""


class RemoteCommandError(DagsterSlurmError):
    """A remote command exited non-zero (or timed out)."""

    def __init__(self, command: str, exit_status: int | None, stderr: str, hint: str = ""):
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = tail(stderr)
        status = "timed out" if exit_status is None else f"exited with status {exit_status}"
        text = f"Remote command {status}: {command}"
        if self.stderr_tail:
            text += f"\nstderr (tail):\n{self.stderr_tail}"
        if hint:
            text += f"\n{hint}"
        super().__init__(text)


class RemoteFileError(DagsterSlurmError):
    """An SFTP upload, read or directory operation failed."""


class SlurmJobError(DagsterSlurmError):
    """A Slurm job ended in a state other than COMPLETED, or the payload failed."""

    def __init__(self, description: str, job_id: str, state: str, exit_code: str, stderr_tail: str,
                 metadata: dict | None = None):
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        super().__init__(
            description,
            metadata={"slurm_job_id": job_id, "slurm_state": state, "slurm_exit_code": exit_code, **(metadata or {})},
        )


def tail(text: str, lines: int = 20, chars: int = 4000) -> str:
    """Last ``lines`` lines (at most ``chars`` characters) of ``text``, stripped."""
    out = "\n".join(text.rstrip().splitlines()[-lines:])
    return out[-chars:]
