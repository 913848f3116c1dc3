"""The Pipes context goes to the job as a private file on the cluster, not an environment variable:
Linux caps one variable at 128 KiB, which large extras would exceed ("Argument list too long")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import PipesContextInjector
from dagster_pipes import PipesContextData, PipesParams


class SlurmContextInjector(PipesContextInjector):
    """Hands the context to the client, which writes it (0600) with the job's other files in one batch."""

    def __init__(self, path: str, *, write: bool = True):
        self.path = path
        self._write = write  # False when reattaching: the job was started with the context already there
        self.pending: bytes | None = None

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        if self._write:
            self.pending = json.dumps(context_data).encode()
        yield {"path": self.path}

    def no_messages_debug_text(self) -> str:
        return f"The Pipes context was written to {self.path} on the cluster (a 0600 file the payload reads)."
