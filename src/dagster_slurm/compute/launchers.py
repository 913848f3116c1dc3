"""Launchers turn a payload path into the command that runs it."""

from __future__ import annotations

import sys

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown


class Launcher(dg.Config):
    """How a payload starts: subclass it and give ``compute.run(..., launcher=MyLauncher())``.

    ``command(payload, local=...)`` receives the payload's path (Slurm mode: its name in the run folder,
    which is the job's working directory, or the absolute remote path of a pre-deployed payload; local
    mode: the absolute local path) and returns the argv to run. In Slurm mode that argv runs in the job
    script after the environment's ``activate.sh`` was sourced, with the Pipes bootstrap and ``extra_env``
    in the environment; each element is shell-quoted (no shell expansion). Fields are Dagster config.
    Example::

        class UnbufferedLauncher(Launcher):
            def command(self, payload, *, local):
                return ["python", "-u", payload]
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)

    def command(self, payload: str, *, local: bool) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must define command(payload, *, local) -> list[str]")


class BashLauncher(Launcher):
    """Run a Python payload with an interpreter, from a bash job script (Slurm) or a subprocess (local).

    In Slurm mode the interpreter is looked up on PATH after the environment's ``activate.sh`` was
    sourced; in local mode ``python`` means the interpreter running Dagster.
    """

    python: str = Field(default="python", description="Interpreter to run the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")

    def command(self, payload: str, *, local: bool) -> list[str]:
        python = sys.executable if local and self.python == "python" else self.python
        return [python, payload, *self.args]
