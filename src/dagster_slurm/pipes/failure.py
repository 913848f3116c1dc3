"""What a failed step shows: the payload's own exception line first, Slurm's verdict in words, and the
stderr tail once, as markdown metadata (not repeated in the failure text). Shared by single jobs,
array tasks and local mode."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_slurm.errors import tail

# what a multi-rank launcher puts before each line of a rank's output (see compute.launchers.RANK_SHIM)
_RANK_PREFIX = re.compile(r"^(\[(?:rank \d+@|ray )[^\]]*\] )?(.*)$")
# the last line of a Python traceback: "ValueError: bad", "pkg.mod.CustomError: x", "KeyboardInterrupt"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure|Warning)\b(: .*)?$")


def closed_exception(message: Mapping[str, Any]) -> str | None:
    """The exception line of a Pipes ``closed`` message that reports one (the payload raised inside
    ``open_dagster_pipes()``), else None."""
    if message.get("method") != "closed" or not isinstance(message.get("params"), dict):
        return None
    exc = message["params"].get("exception")
    if not isinstance(exc, dict) or exc.get("name") == "SystemExit":  # sys.exit(n): the exit status says it
        return None
    lines = [line for line in str(exc.get("message") or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else (str(exc.get("name")) if exc.get("name") else None)


def exception_line(pipes_exception: str | None, stderr_tail: str) -> str | None:
    """The payload's own exception line: from Pipes, else the last error the job script or a launcher
    printed (``dagster-slurm: ...``), else from its stderr the line that ends the last Python traceback
    (the first unindented line after it), else the last line that looks like one."""
    if pipes_exception:
        return pipes_exception
    ours = [line.strip() for line in stderr_tail.splitlines() if line.startswith("dagster-slurm: ")]
    if ours:  # what the job script or a launcher said went wrong (a Ray node that never joined, ...)
        return ours[-1]
    lines = [(m.group(1) or "", m.group(2)) for m in map(_RANK_PREFIX.match, stderr_tail.splitlines()) if m]
    starts = [i for i, (_p, text) in enumerate(lines) if text.startswith("Traceback (most recent call last)")]
    if starts:
        prefix = lines[starts[-1]][0]
        for line_prefix, text in lines[starts[-1] + 1:]:
            if line_prefix == prefix and text.strip() and not text[0].isspace():
                return prefix + text.strip()
    for prefix, text in reversed(lines):
        if _EXCEPTION_LINE.match(text.strip()):
            return prefix + text.strip()
    return None


def exit_text(exit_code: str, payload_rc: int | None = None) -> str:
    """Slurm's ``code:signal`` in words: ``1:0`` -> ``exit status 1``, ``0:9`` -> ``signal 9``. The status
    the job script recorded for the payload wins over Slurm's code (sacct reports ``0:0`` for a moment
    after the end, before slurmdbd completes the job's row)."""
    code, _, signal = (exit_code or "").partition(":")
    if signal and signal != "0":
        return f"signal {signal}"
    if payload_rc is not None:
        return f"exit status {payload_rc}"
    return f"exit status {code}" if code.isdigit() else "exit status unknown"


def stderr_metadata(stderr_tail: str, key: str = "slurm_stderr_tail") -> dict[str, dg.MetadataValue]:
    """The stderr tail as one markdown block (fenced: no markdown in it is interpreted)."""
    text = tail(stderr_tail)
    if not text:
        return {}
    fence = "````" if "```" in text else "```"
    return {key: dg.MetadataValue.md(f"{fence}\n{text}\n{fence}")}


def tasks_stderr_metadata(tails: Sequence[tuple[str, str]]) -> dict[str, dg.MetadataValue]:
    """Failed tasks' stderr tails (label, tail), one markdown section each."""
    sections = []
    for label, text in tails:
        body = tail(text, 12, 1500)
        if body:
            fence = "````" if "```" in body else "```"
            sections.append(f"**{label}**\n\n{fence}\n{body}\n{fence}")
    return {"slurm_stderr_tails": dg.MetadataValue.md("\n\n".join(sections))} if sections else {}
