"""Facts about the cluster asked once per transport (so per process and cluster) and kept here:
the one place probe results live (``uname -m``, the remote Python's version, ``sbatch --help``, ...)."""

from __future__ import annotations

import threading
import weakref

_facts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def probe(transport, command: str, check: bool = True) -> str:
    """stdout of a read-only fact-finding command, run once per transport and command."""
    with _lock:
        facts = _facts.setdefault(transport, {})
        if command in facts:
            return facts[command]
    out = transport.run(command, retry=True, check=check).stdout
    with _lock:
        facts[command] = out
    return out
