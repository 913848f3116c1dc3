"""Local mode: the payload runs in a subprocess on this machine, with the same Pipes protocol."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster import (
    PipesClientCompletedInvocation,
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)

from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.pipes.client import NO_PIPES_HINT
from dagster_slurm.pipes.reader import OneWriter


class _TempFileReader(OneWriter, PipesTempFileMessageReader):
    pass


def run_local(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    command: Sequence[str],
    env: Mapping[str, str],
    extras: Mapping[str, object] | None,
) -> PipesClientCompletedInvocation:
    with open_pipes_session(
        context=context,
        context_injector=PipesTempFileContextInjector(),
        message_reader=_TempFileReader(),
        extras=extras,
    ) as session:
        process = subprocess.Popen(list(command), env={**os.environ, **env, **session.get_bootstrap_env_vars()})
        try:
            returncode = process.wait()
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning("Run terminated: stopping the local payload.")
            process.terminate()
            process.wait(timeout=30)
            raise
    if returncode != 0:
        raise DagsterSlurmError(f"The payload {' '.join(command)} exited with status {returncode} (local mode).")
    if not session.message_handler.received_opened_message:
        raise DagsterSlurmError(NO_PIPES_HINT)
    return PipesClientCompletedInvocation(session)
