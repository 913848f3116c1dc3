"""Uploads with progress in the log and an atomic rename at the end."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from dagster_slurm.packaging.packer import Log

PROGRESS_MIN_BYTES = 4 * 2**20


def upload_with_progress(transport, local: Path, remote: str, log: Log, every: float = 2.0) -> None:
    """Upload to ``remote`` via a temporary name and rename, logging bytes and rate for big files."""
    size = local.stat().st_size
    started = last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if size >= PROGRESS_MIN_BYTES and (now - last >= every or done == total):
            last = now
            rate = done / max(now - started, 1e-6) / 1e6
            log(f"Uploading {local.name}: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({rate:.1f} MB/s)")

    tmp = f"{remote}.part-{secrets.token_hex(3)}"
    transport.put_file(str(local), tmp, progress=progress)
    transport.rename(tmp, remote)
