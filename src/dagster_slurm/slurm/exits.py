"""Notice a job's end the moment its exit file appears, with ONE small remote process per connection.

The job script writes ``exit_code`` (atomically, by rename) as its last act. A Python loop on the
login node checks the watched exit files every 50 ms (a few ``open`` calls, no process started per
check) and prints ``path<TAB>code`` for each that appeared; the watcher then polls Slurm at once.
Paths come and go over the process's stdin. Without python3 on the login node this stays off and
the end is noticed by the regular polls, as before.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dagster_slurm.slurm")

CHECK_EVERY = 0.05
KEEP_OPEN = 120.0  # seconds the remote loop stays after its last watched file (the next job reuses it)
RETRY_AFTER = 300.0  # after the loop could not start

_SCRIPT = f"""
import os, select, sys
watch, buf = {{}}, b""
print("ready", flush=True)
while True:
    if select.select([0], [], [], {CHECK_EVERY} if watch else 5.0)[0]:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b"\\n")
        for line in lines:
            text = line.decode(errors="replace")
            if text[:1] == "+":
                watch[text[1:]] = 1
            elif text[:1] == "-":
                watch.pop(text[1:], None)
    for path in list(watch):
        try:
            with open(path, errors="replace") as fh:
                code = fh.read().strip()
        except OSError:
            continue
        print(path + "\\t" + code, flush=True)
        del watch[path]
"""
COMMAND = f"command -v python3 >/dev/null 2>&1 && exec python3 -u -c {shlex.quote(_SCRIPT)}"


class ExitWatcher:
    """Calls ``on_exit(job_id, exit code or None)`` when a watched job's exit file appears."""

    def __init__(self, transport, on_exit: Callable[[str, int | None], None]):
        self._transport = transport
        self._on_exit = on_exit
        self._paths: dict[str, str] = {}  # exit file -> job id
        self._lock = threading.Lock()
        self._stream: Any = None  # a transport's RemoteStream
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._restarts = 0
        self.noticed = 0

    @property
    def streaming(self) -> bool:
        """Whether the remote loop runs (ends are then noticed without polling)."""
        return self._stream is not None

    def add(self, job_id: str, path: str) -> None:
        with self._lock:
            self._paths[path] = job_id
            stream = self._stream
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dagster-slurm-exits", daemon=True)
                self._thread.start()
        if stream is not None:
            self._send(stream, "+" + path)

    def remove(self, job_id: str) -> None:
        with self._lock:
            gone = [p for p, j in self._paths.items() if j == job_id]
            for path in gone:
                del self._paths[path]
            stream = self._stream
        for path in gone:
            if stream is not None:
                self._send(stream, "-" + path)

    @staticmethod
    def _send(stream, line: str) -> None:
        try:
            stream.send(line + "\n")
        except Exception:  # noqa: BLE001 - the loop notices a dead stream and starts again
            pass

    def _open(self):
        opener = getattr(self._transport, "open_stream", None)
        if opener is None:
            return None
        stream = opener(COMMAND)
        if stream.readline(15.0) != "ready\n":
            stream.close()
            raise RuntimeError("python3 is not available on the login node")
        return stream

    def _loop(self) -> None:
        idle_since = None
        while True:
            with self._lock:
                paths = list(self._paths)
            now = time.monotonic()
            if not paths:
                idle_since = idle_since or now
                if now - idle_since > KEEP_OPEN or self._stream is None:
                    with self._lock:
                        if not self._paths:
                            self._close()
                            self._thread = None
                            return
                    continue
            else:
                idle_since = None
            if self._stream is None:
                if now < self._retry_at:
                    time.sleep(min(1.0, self._retry_at - now))
                    continue
                try:
                    stream = self._open()
                except Exception as exc:  # noqa: BLE001 - without it, ends are noticed by polling
                    stream = None
                    log.info("job ends are noticed by polling only: the exit-file watcher did not start (%s)", exc)
                if stream is None:
                    self._retry_at = time.monotonic() + RETRY_AFTER
                    continue
                with self._lock:
                    self._stream = stream
                    paths = list(self._paths)
                if paths:
                    self._send(stream, "\n".join("+" + p for p in paths))
            line = self._stream.readline(1.0)
            if line is None:
                continue
            if line == "":  # the loop or the connection ended: start again, not at once
                with self._lock:
                    self._close()
                self._restarts += 1
                self._retry_at = time.monotonic() + min(0.5 * 2 ** self._restarts, RETRY_AFTER)
                continue
            self._restarts = 0
            path, _, code = line.rstrip("\n").partition("\t")
            with self._lock:
                job_id = self._paths.pop(path, None)
            if job_id is not None:
                self.noticed += 1
                self._on_exit(job_id, int(code) if code.lstrip("-").isdigit() else None)

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
