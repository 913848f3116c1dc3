"""The Pipes context goes to the job as a private file on the cluster, not an environment variable:
Linux caps one variable at 128 KiB, which large extras would exceed ("Argument list too long")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import PipesContextInjector
from dagster_pipes import PipesContextData, PipesParams

from dagster_slurm.transport.base import Transport


class SlurmContextInjector(PipesContextInjector):
    def __init__(self, transport: Transport, path: str, *, write: bool = True):
        self._transport = transport
        self.path = path
        self._write = write  # False when reattaching: the job was started with the context already there

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        if self._write:
            self._transport.write_bytes(self.path, json.dumps(context_data).encode(), mode=0o600)
        yield {"path": self.path}

    def no_messages_debug_text(self) -> str:
        return f"The Pipes context was written to {self.path} on the cluster (a 0600 file the payload reads)."
