"""Hardening that needs no cluster: bad input gets a clear error, nothing POSIX-only at import, stream decoding."""

import ast
import io
from pathlib import Path

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SSHConnectionResource
from dagster_slurm.config.env import check_env_names
from dagster_slurm.errors import ConfigurationError, SlurmJobError
from dagster_slurm.pipes.reader import RunFiles, SlurmRunMessageReader

SRC = Path(__file__).parents[2] / "src" / "dagster_slurm"


def test_configuration_errors_are_not_retried_by_a_retry_policy(tmp_path):
    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2))
    def missing(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(tmp_path / "nope.py")).get_results()

    result = dg.materialize([missing], resources={"compute": ComputeResource()}, raise_on_error=False)
    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []
    assert ConfigurationError("x").allow_retries is False and SlurmJobError("x", "1", "FAILED", "", "").allow_retries


@pytest.mark.parametrize("name", ["ÄPI", "1X", "A-B", "A B", ""])
def test_extra_env_names_a_shell_cannot_export_are_refused(name):
    with pytest.raises(ConfigurationError, match="extra_env.*A-Za-z_"):
        check_env_names({name: "v"})


def test_extra_env_valid_names_pass():
    assert check_env_names({"_OK1": 1, "Path": "x"}) == {"_OK1": "1", "Path": "x"}


def test_local_mode_refuses_a_bad_extra_env_name(payloads):
    @dg.asset
    def bad_env(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "trivial.py"),
                           extra_env={"ÄPI": "1"}).get_results()

    result = dg.materialize([bad_env], resources={"compute": ComputeResource()}, raise_on_error=False)
    assert "not a valid environment variable name" in result.get_step_failure_events()[0].step_failure_data.error.message


def test_no_posix_only_module_is_imported_by_the_package():
    """Local mode must import on Windows: no fcntl, termios, pwd, grp or resource in our code."""
    posix_only = {"fcntl", "termios", "pwd", "grp", "resource"}
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in posix_only]
    assert found == []


def test_streamed_output_decodes_characters_split_across_reads():
    reader = SlurmRunMessageReader(None, RunFiles("/x"))  # type: ignore[arg-type]
    out = io.StringIO()
    sink = reader._write(out)
    data = "Grüße, 日本\n".encode()
    for i in range(len(data)):  # one byte per read: every multi-byte character is split
        sink(data[i:i + 1])
    assert out.getvalue() == "Grüße, 日本\n"


def test_private_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    key = tmp_path / "id_test"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    with pytest.raises(ConfigurationError, match=f"chmod 600 {key}"):
        SSHConnectionResource(host="127.0.0.1", key_path=str(key)).settings()
    key.chmod(0o600)
    assert SSHConnectionResource(host="127.0.0.1", key_path=str(key)).settings().key_path == str(key)


def test_key_passphrase_from_env_is_never_shown(monkeypatch):
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "127.0.0.1")
    monkeypatch.setenv("SLURM_EDGE_NODE_KEY_PASSPHRASE", "s3cret-phrase")
    monkeypatch.delenv("SLURM_EDGE_NODE_KEY_PATH", raising=False)
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    resource = SSHConnectionResource.from_env()  # an EnvVar: resolved when Dagster builds the resource
    with dg.build_resources({"ssh": resource}) as built:
        settings = built.ssh.settings()
        assert settings.key_passphrase == "s3cret-phrase"
        assert "s3cret-phrase" not in repr(settings) and "s3cret-phrase" not in repr(built.ssh)


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, text):
        self.lines.append(text)

    warning = info


def test_job_that_can_never_start_is_cancelled_and_names_the_setting():
    from recorded_transport import RecordedTransport

    from dagster_slurm.pipes.waiting import wait_for_job
    from dagster_slurm.slurm.watcher import JobWatcher

    text = (Path(__file__).parents[1] / "data" / "slurm" / "squeue_partition_config.txt").read_text()
    recorded = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("# "))
    job_id = recorded.split("|")[0]
    transport = RecordedTransport({"squeue": recorded})
    log = _Log()
    with pytest.raises(ConfigurationError, match="can never start: pending reason PartitionConfig") as err:
        wait_for_job(log, JobWatcher(transport), transport, job_id, job_timeout=None, queue_timeout=None)
    assert "resource_requirements" in str(err.value) and "cancelled" in str(err.value)
    assert any(c.startswith(f"scancel {job_id};") for c in transport.commands)  # then waits until squeue drops it
    assert log.lines[0] == f"Slurm job {job_id}: PENDING (PartitionConfig)"


def test_queue_timeout_cancels_a_job_that_waits_too_long():
    from recorded_transport import RecordedTransport

    from dagster_slurm.pipes.waiting import wait_for_job
    from dagster_slurm.slurm.watcher import JobWatcher

    recorded = (Path(__file__).parents[1] / "data" / "slurm" / "squeue_running_pending.txt").read_text()
    pending = next(line for line in recorded.splitlines() if "|PENDING|" in line)
    job_id = pending.split("|")[0]
    transport = RecordedTransport({"squeue": pending})
    with pytest.raises(SlurmJobError, match="queue_timeout=1 s; it was cancelled"):
        wait_for_job(_Log(), JobWatcher(transport), transport, job_id, job_timeout=None, queue_timeout=1)
    assert any(c.startswith(f"scancel {job_id};") for c in transport.commands)  # then waits until squeue drops it


def test_finished_job_is_reported_at_once_when_accounting_is_down():
    """squeue says the job ended, sacct fails (slurmdbd stopped, recorded): no 25-tick wait for metrics."""
    import json

    from recorded_transport import RecordedTransport

    from dagster_slurm.slurm.watcher import JobWatcher

    data = Path(__file__).parents[1] / "data" / "slurm"
    sacct = json.loads((data / "sacct_dbd_down.json").read_text())
    squeue = "".join(line for line in (data / "squeue_terminal.txt").read_text().splitlines(keepends=True)
                     if not line.startswith("# "))
    job_id, state = squeue.split("|")[:2]
    transport = RecordedTransport({"squeue": squeue, "sacct": sacct})
    watcher = JobWatcher(transport)
    handle = watcher.watch(job_id)
    assert handle.wait(5)
    assert handle.final is not None and not handle.final.accounted and handle.final.state == state
    assert watcher.ticks == 1
    assert handle.final.metadata()["slurm_accounting"].startswith("unavailable")


class _Conn:
    def __init__(self):
        self.closed = False

    def is_closed(self):
        return self.closed

    def close(self):
        self.closed = True


def test_a_late_loss_report_of_an_old_connection_keeps_the_new_one():
    from dagster_slurm.config.ssh import SSHSettings
    from dagster_slurm.transport.ssh import SSHTransport

    transport = SSHTransport(SSHSettings(host="127.0.0.1"))
    old, new = _Conn(), _Conn()
    transport._conn = new  # type: ignore[assignment]
    transport._mark_lost(old)  # the old connection's connection_lost arrives after the reconnect
    assert transport._conn is new and not new.closed
    transport._mark_lost(new)
    assert transport._conn is None
    transport._conn = new  # type: ignore[assignment]
    new.closed = False
    transport._mark_lost()  # an operation found the connection broken: it is closed, not leaked
    assert transport._conn is None and new.closed


def test_runs_gc_plan_keeps_young_and_active_folders():
    from dagster_slurm.slurm.run_folders import RunFolders, delete_command, plan_runs_gc

    text = ("CALL|/b/runs/r1/a-1|1000|11,12\nCALL|/b/runs/r1/b-2|1000|13\nCALL|/b/runs/r2/c-3|99000|\n"
            "CALL|/b/runs/r3/d-4|1000|\nACTIVE|0|13,\n")
    found = RunFolders.parse(text)
    doomed = plan_runs_gc(found, older_than=3600, now=100_000)
    assert [c.path for c in doomed] == ["/b/runs/r1/a-1", "/b/runs/r3/d-4"]  # b-2's job 13 runs; c-3 is young
    command = delete_command("/b/runs", doomed)
    assert "rm -rf -- /b/runs/r1/a-1" in command and "-empty -delete" in command
    down = RunFolders.parse("ACTIVE|1|slurm_load_jobs error: Unable to contact slurm controller,\n")
    assert down.squeue_error is not None
    malformed = RunFolders.parse("ACTIVE|1|squeue: error: Invalid job id: _,\n")  # not "all ended": a failure
    assert malformed.squeue_error is not None


def test_a_literal_password_in_code_gets_a_warning_without_the_value(monkeypatch):
    monkeypatch.delenv("PW_FOR_TEST", raising=False)
    with pytest.warns(UserWarning, match="password is a literal string in code") as record:
        SSHConnectionResource(host="127.0.0.1", password="hunter2-literal")
    assert all("hunter2-literal" not in str(w.message) for w in record)


def test_a_password_from_the_environment_gets_no_warning(monkeypatch):
    import warnings

    monkeypatch.setenv("PW_FOR_TEST", "from-env-secret")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resource = SSHConnectionResource(host="127.0.0.1", password=dg.EnvVar("PW_FOR_TEST"))
        with dg.build_resources({"ssh": resource}) as built:
            assert built.ssh.settings().password == "from-env-secret"


def test_accounting_lag_is_bounded_in_time_and_said(monkeypatch):
    """squeue says the job ended but sacct has no record of it yet (recorded: an unknown id's empty
    answer): the result comes within the bound, says its metrics are missing, and polls stay <= 1 s."""
    import time

    from recorded_transport import RecordedTransport

    from dagster_slurm.slurm import watcher as watcher_module

    data = Path(__file__).parents[1] / "data" / "slurm"
    squeue = "".join(line for line in (data / "squeue_terminal.txt").read_text().splitlines(keepends=True)
                     if not line.startswith("# "))
    job_id, state = squeue.split("|")[:2]
    monkeypatch.setattr(watcher_module, "SACCT_LAG_SECONDS", 1.5)
    transport = RecordedTransport({"squeue": squeue, "sacct": ""})
    watcher = watcher_module.JobWatcher(transport, min_interval=0.1, max_interval=10.0)
    started = time.monotonic()
    handle = watcher.watch(job_id)
    assert handle.wait(10)
    assert 1.5 <= time.monotonic() - started < 4
    assert handle.final is not None and not handle.final.accounted and handle.final.state == state
    assert "no sacct record within 1.5 s" in handle.final.metadata()["slurm_accounting"]


def test_cancel_survives_a_burst_of_termination_signals():
    """Dagster sends the step process several interrupts on terminate (the run's SIGINT, the executor's
    forwarded one): scancel must still reach the cluster, once, whatever they interrupt."""
    import os
    import signal
    import threading
    import time

    from recorded_transport import RecordedTransport

    from dagster_slurm.pipes.waiting import _cancel, cancel_command

    class Slow(RecordedTransport):
        def run(self, command, **kw):
            time.sleep(0.3)  # the remote round trip, during which the interrupts arrive
            return super().run(command, **kw)

    transport = Slow({})

    def interrupts():
        for _ in range(5):
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)  # real signals: they cut a sleep or a socket wait short

    handled = []

    def handler(signum, frame):  # as Python's default: raise in the main thread; but count them
        handled.append(signum)
        raise KeyboardInterrupt

    burst = threading.Thread(target=interrupts)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        burst.start()
        try:
            _cancel(transport, "1726", "rm -f -- env.sh")
        except KeyboardInterrupt:  # one may land after _cancel returned
            pass
        deadline = time.monotonic() + 10
        while (burst.is_alive() or len(handled) < 5) and time.monotonic() < deadline:
            try:  # every signal is handled here before the test's own handler goes
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(handled) == 5
    assert transport.commands == [cancel_command("1726", "rm -f -- env.sh")]
    assert transport.commands[0].startswith("scancel 1726; rm -f -- env.sh; ")


def test_a_terminate_in_a_guarded_section_raises_nowhere_and_the_wait_cancels():
    """SIGINT or SIGTERM while a job may exist (mid-sbatch, mid-bookkeeping) raises nothing where it lands: the
    wait sees it, cancels the job (waiting until squeue drops it) and raises Dagster's interruption."""
    import os
    import signal

    import dagster as dg
    from recorded_transport import RecordedTransport

    from dagster_slurm.pipes.waiting import TerminateGuard, wait_for_job
    from dagster_slurm.slurm.watcher import JobWatcher

    transport = RecordedTransport({"squeue": "77|RUNNING|None|N/A\n"})
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        with TerminateGuard() as guard:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. while sbatch runs: noted, not raised
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.signum == signal.SIGTERM
            wait_for_job(_Log(), JobWatcher(transport), transport, "77", job_timeout=None, queue_timeout=None,
                         terminate=guard)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    cancels = [c for c in transport.commands if c.startswith("scancel 77")]
    assert len(cancels) == 1 and "squeue -h -j 77" in cancels[0]
    with pytest.raises(dg.DagsterExecutionInterruptedError):  # before any sbatch: the step just ends
        with TerminateGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            guard.raise_if_requested()
