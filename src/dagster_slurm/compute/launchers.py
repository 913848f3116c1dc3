"""Launchers turn a payload path into the command that runs it."""

from __future__ import annotations

import sys

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown


class BashLauncher(dg.Config):
    """Run a Python payload with an interpreter, from a bash job script (Slurm) or a subprocess (local).

    In Slurm mode the interpreter is looked up on PATH after the environment's ``activate.sh`` was
    sourced; in local mode ``python`` means the interpreter running Dagster.
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)


    python: str = Field(default="python", description="Interpreter to run the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")

    def command(self, payload: str, *, local: bool) -> list[str]:
        python = sys.executable if local and self.python == "python" else self.python
        return [python, payload, *self.args]
