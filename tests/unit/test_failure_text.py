"""What a failed step says: the payload's exception line first, Slurm's verdict in words, stderr once."""

import dagster as dg
import pytest

from dagster_slurm.pipes.failure import (
    closed_exception,
    exception_line,
    exit_text,
    stderr_metadata,
    tasks_stderr_metadata,
)

# a "closed" message as dagster_pipes writes it when the payload raised inside open_dagster_pipes()
CLOSED = {"__dagster_pipes_version": "0.1", "method": "closed", "params": {"exception": {
    "name": "FileNotFoundError", "message": "FileNotFoundError: /data/input.parquet does not exist\n",
    "stack": ['  File "raises.py", line 8, in <module>\n'], "cause": None, "context": None}}}

TRACEBACK = """Traceback (most recent call last):
  File "job.py", line 3, in <module>
    main()
pkg.errors.InputMissing: no rows for 2026-01-02"""


def test_the_exception_pipes_reported_comes_first():
    assert closed_exception(CLOSED) == "FileNotFoundError: /data/input.parquet does not exist"
    assert exception_line(closed_exception(CLOSED), TRACEBACK) == "FileNotFoundError: /data/input.parquet does not exist"


def test_without_pipes_the_last_traceback_line_of_stderr():
    assert exception_line(None, TRACEBACK + "\nsome trailing log line") == "pkg.errors.InputMissing: no rows for 2026-01-02"
    assert exception_line(None, "just a message\nanother") is None
    assert exception_line(None, "Killed\nKeyboardInterrupt") == "KeyboardInterrupt"


@pytest.mark.parametrize("message", [
    {"method": "closed", "params": {}},
    {"method": "closed", "params": None},
    {"method": "log", "params": {"message": "x", "level": "INFO"}},
    {"method": "closed", "params": {"exception": {**CLOSED["params"]["exception"], "name": "SystemExit",
                                                  "message": "SystemExit: 3\n"}}},
])
def test_no_exception_line_from_other_messages_or_sys_exit(message):
    assert closed_exception(message) is None


@pytest.mark.parametrize(("code", "rc", "text"), [
    ("1:0", None, "exit status 1"), ("0:9", None, "signal 9"), ("0:125", None, "signal 125"),
    ("", 4, "exit status 4"), ("", None, "exit status unknown"), ("0:0", 97, "exit status 97"), ("0:15", 0, "signal 15"),
])
def test_exit_codes_in_words(code, rc, text):
    assert exit_text(code, rc) == text


def test_stderr_is_one_fenced_markdown_block():
    meta = stderr_metadata("line 1\n# not a heading\n")
    assert isinstance(meta["slurm_stderr_tail"], dg.MarkdownMetadataValue)
    assert meta["slurm_stderr_tail"].value == "```\nline 1\n# not a heading\n```"
    assert stderr_metadata("```inner```")["slurm_stderr_tail"].value.startswith("````\n")
    assert stderr_metadata("  \n") == {}
    tasks = tasks_stderr_metadata([("a", "boom"), ("b", "")])["slurm_stderr_tails"].value
    assert tasks == "**a**\n\n```\nboom\n```"


def test_a_ranks_traceback_names_the_rank():
    stderr = ("[rank 0@n1] waiting\n[rank 2@n3] Traceback (most recent call last):\n"
              "[rank 2@n3]   File \"p.py\", line 3, in <module>\n[rank 0@n1] still waiting\n"
              "[rank 2@n3] ValueError: rank 2 gave up\nsrun: error: n3: task 2: Exited with exit code 1\n")
    assert exception_line(None, stderr) == "[rank 2@n3] ValueError: rank 2 gave up"


def test_a_launchers_own_error_heads_the_failure():
    stderr = ("[ray n3] Traceback (most recent call last):\n[ray n3] Exception: The current node timed out\n"
              "dagster-slurm: a Ray node exited before all 3 had joined (its lines above: [ray <node>])\n")
    assert exception_line(None, stderr).startswith("dagster-slurm: a Ray node exited")
    assert exception_line(None, stderr.rsplit("dagster-slurm", 1)[0]) == "[ray n3] Exception: The current node timed out"
