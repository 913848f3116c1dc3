"""Read a remote job's Pipes messages, stdout and stderr while it runs, over one SFTP session.

Each tick reads every file from the byte offset reached so far (one concurrent round trip), hands
complete message lines to Dagster in order, and writes stdout/stderr to this process's streams,
which Dagster captures as compute logs. Offsets only move past complete lines, so nothing is lost
or duplicated. The payload's exit file wakes the job watcher at once.
"""

from __future__ import annotations

import codecs
import json
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dagster import PipesMessageHandler, PipesMessageReader
from dagster_pipes import PipesParams

from dagster_slurm.pipes.failure import closed_exception
from dagster_slurm.transport.base import Transport

log = logging.getLogger("dagster_slurm.pipes")


@dataclass
class RunFiles:
    """Where one run keeps its files on the cluster (absolute paths)."""

    run_dir: str

    def path(self, name: str) -> str:
        return f"{self.run_dir.rstrip('/')}/{name}"

    @property
    def messages(self) -> str:
        return self.path("messages.jsonl")

    @property
    def stdout(self) -> str:
        return self.path("stdout.log")

    @property
    def stderr(self) -> str:
        return self.path("stderr.log")

    @property
    def exit_code(self) -> str:
        return self.path("exit_code")


@dataclass
class _Stream:
    path: str
    offset: int = 0
    pending: bytes = b""
    sink: Callable[[bytes], None] = lambda _b: None
    lines_only: bool = False


@dataclass
class TailState:
    exit_code: int | None = None
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=40))
    exception: str | None = None  # the exception line the payload's Pipes "closed" message reported


class OneWriter:
    """Mixed into our message readers: one writer per handler. Dagster's own default of this property is a
    preview API whose warning would land in every step's stderr."""

    @property
    def expected_writer_count(self) -> int:
        return 1


class SlurmRunMessageReader(OneWriter, PipesMessageReader):
    """A ``PipesMessageReader`` that tails a Slurm run's files on the cluster."""

    def __init__(self, transport: Transport, files: RunFiles, *, on_exit: Callable[[], None] = lambda: None,
                 min_interval: float = 0.1, max_interval: float = 0.5, forward_stdio: bool = True):
        self._transport = transport
        self.files = files
        self._on_exit = on_exit
        self._min, self._max = min_interval, max_interval
        self._forward = forward_stdio
        self.state = TailState()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._started = threading.Event()
        self._handler: PipesMessageHandler | None = None
        self._lock = threading.Lock()

    # -- PipesMessageReader
    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        self._handler = handler
        self._streams = [
            _Stream(self.files.messages, sink=self._handle_message_line, lines_only=True),
            _Stream(self.files.stdout, sink=self._write(sys.stdout)),
            _Stream(self.files.stderr, sink=self._write(sys.stderr, self._stderr_text)),
        ]
        thread = threading.Thread(target=self._loop, name="dagster-slurm-tail", daemon=True)
        thread.start()
        try:
            yield {"path": self.files.messages}
        finally:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=60)

    def start(self) -> None:
        """Begin tailing (the job was submitted, so its files may appear)."""
        self._started.set()

    def no_messages_debug_text(self) -> str:
        return (
            f"Looked for Pipes messages in {self.files.messages} on the cluster. The payload must call "
            "`with open_dagster_pipes() as pipes:` (from dagster_pipes) so that it writes them there."
        )

    # -- tailing
    def _write(self, stream, on_text: Callable[[str], None] = lambda _t: None) -> Callable[[bytes], None]:
        """A sink for one stream's chunks: decoded incrementally, so a UTF-8 character split across
        two reads is not mangled."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def sink(data: bytes) -> None:
            text = decoder.decode(data)
            if not text:
                return
            on_text(text)
            if self._forward:
                stream.write(text)
                stream.flush()

        return sink

    def _stderr_text(self, text: str) -> None:
        for line in text.splitlines():
            self.state.stderr_tail.append(line)

    def _handle_message_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            log.warning("skipping a malformed Pipes message line: %r", line[:200])
            return
        assert self._handler is not None
        self.state.exception = self.state.exception or closed_exception(message)
        self._handler.handle_message(message)

    def poll_once(self) -> bool:
        """Read what is new in every file. Returns whether anything arrived."""
        with self._lock:
            requests = [(s.path, s.offset) for s in self._streams]
            if self.state.exit_code is None:
                requests.append((self.files.exit_code, 0))
            chunks = self._transport.read_many(requests)  # type: ignore[attr-defined]
            got = False
            for stream, data in zip(self._streams, chunks[: len(self._streams)], strict=True):
                if not data:
                    continue
                got = True
                stream.offset += len(data)
                if stream.lines_only:
                    buf = stream.pending + data
                    *complete, stream.pending = buf.split(b"\n")
                    for line in complete:
                        stream.sink(line)
                else:
                    stream.sink(data)
            if len(chunks) > len(self._streams) and chunks[-1] and chunks[-1].strip().isdigit():
                self.state.exit_code = int(chunks[-1].strip())
                self._on_exit()
                got = True
            return got

    def _loop(self) -> None:
        interval = self._min
        while not self._started.wait(0.1):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            try:
                got = self.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep tailing; the watcher reports real failures
                log.warning("reading job output failed: %s", exc)
                got = False
            interval = self._min if got else min(interval * 1.5, self._max)
            if self._wake.wait(interval):
                self._wake.clear()

    def wake(self) -> None:
        """Read now (the job's exit file appeared: its last output is there)."""
        self._wake.set()

    def drain(self, settle_seconds: float = 5.0) -> None:
        """After the job ended: read to the end. If the payload opened Pipes but its ``closed``
        message is not visible yet (slow shared filesystem), keep reading for ``settle_seconds``."""
        import time

        deadline = time.monotonic() + settle_seconds
        while True:
            got = self.poll_once()
            handler = self._handler
            waiting = handler is not None and handler.received_opened_message and not handler.received_closed_message
            if not got and (not waiting or time.monotonic() > deadline):
                break
            if not got:
                time.sleep(0.1)
        for stream in self._streams:
            if stream.lines_only and stream.pending:
                stream.sink(stream.pending)
                stream.pending = b""
