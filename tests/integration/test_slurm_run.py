"""End to end on the real test cluster: an asset runs as a Slurm job over SSH with Dagster Pipes."""

import logging
import os
import signal
import time

import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SlurmJobError

pytestmark = pytest.mark.cluster


def _asset(payload, **run_kwargs):
    @dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="reporter")] if run_kwargs.pop("check", False) else None,
              metadata=run_kwargs.pop("metadata", None), name=run_kwargs.pop("name", "reporter"))
    def reporter(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload), **run_kwargs).get_results()

    return reporter


def _materialize(asset, compute, **kw):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([asset], resources={"compute": compute}, raise_on_error=False, instance=instance, **kw)
    result.log_messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result


def test_asset_runs_as_slurm_job_with_logs_metadata_check_and_metrics(slurm, pipes_env, payloads, capfd):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    asset = _asset(payloads / "report.py", extras={"foo": 7, "busy_seconds": 3}, extra_env={"K": "v"}, check=True,
                   resource_requirements={"partition": "batch", "cpus": 2})
    result = _materialize(asset, compute)
    assert result.success
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert meta["foo"].value == 7
    assert meta["env_k"].value == "v"
    assert meta["partition"].value == "batch"
    assert meta["cpus"].value == "2"
    assert meta["slurm_state"].value == "COMPLETED"
    assert meta["slurm_exit_code"].value == "0:0"
    assert int(meta["slurm_job_id"].value) > 0
    assert meta["slurm_cpus"].value == 2
    # one value per quantity, numbers as numbers; what was asked for beside what was used
    assert isinstance(meta["slurm_elapsed_seconds"], dg.IntMetadataValue)
    assert isinstance(meta["slurm_queue_wait_seconds"], dg.IntMetadataValue)
    assert meta["slurm_node_hours"].value > 0 or meta["slurm_elapsed_seconds"].value == 0
    assert meta["slurm_requested_mem_mb"].value == 256.0 and meta["slurm_time_limit_seconds"].value == 300
    assert isinstance(meta["slurm_max_rss_mb"], dg.FloatMetadataValue)
    assert not {"slurm_elapsed", "slurm_max_rss_bytes", "slurm_cpu_efficiency"} & set(meta)
    if "slurm_cpu_efficiency_percent" in meta:  # absent when the job's elapsed time rounds to 0 s
        assert 0 <= meta["slurm_cpu_efficiency_percent"].value <= 100
    assert isinstance(meta["slurm_environment"], dg.PathMetadataValue)
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("positive", True)]
    # the check: the payload's metadata first; of Slurm's, only the job id (the materialization has the rest)
    assert list(checks[0].metadata) == ["n", "slurm_job_id"]
    assert checks[0].metadata["slurm_job_id"].value == meta["slurm_job_id"].value
    assert any(m.startswith("hello from ") for m in result.log_messages)
    out, err = capfd.readouterr()
    assert "line on stdout" in out
    assert "line on stderr" in err


def test_messages_arrive_complete_in_order_once(slurm, pipes_env, payloads):
    n = 400
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "many_logs.py", extras={"n": n}), compute)
    assert result.success
    got = [m for m in result.log_messages if m.startswith("msg ")]
    assert got == [f"msg {i}" for i in range(n)]


def test_asset_metadata_selects_partition_and_resources(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    asset = _asset(payloads / "report.py", extras={"foo": 1},
                   metadata={"slurm_resources": {"partition": "batch", "cpus": 2}})
    result = _materialize(asset, compute)
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert (meta["partition"].value, meta["cpus"].value) == ("batch", "2")


def test_failing_payload_reports_state_exit_code_and_stderr(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "fails.py"), compute)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    job_id = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata["slurm_job_id"].value
    assert f"Slurm job {job_id} FAILED, exit status 3." in failure.message
    assert "disk on fire" not in failure.message and failure.cause is None  # stderr once: in the metadata
    meta = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata
    assert meta["slurm_stderr_tail"].value == "```\nsomething went wrong: disk on fire\n```"
    assert meta["slurm_state"].value == "FAILED" and isinstance(meta["slurm_elapsed_seconds"].value, int)
    assert meta["slurm_max_rss_mb"].value > 0 and "slurm_node_hours" in meta
    run_dir = meta["slurm_run_folder"].value
    assert isinstance(meta["slurm_stderr"], dg.PathMetadataValue) and meta["slurm_stderr"].value == f"{run_dir}/stderr.log"
    assert meta["slurm_stdout"].value == f"{run_dir}/stdout.log"


def test_failed_run_keeps_its_logs_private_and_drops_its_env_file(slurm, pipes_env, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "fails.py", extra_env={"TOKEN": "t0ken-xyz"}), compute)
    assert not result.success
    run_dir = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata["slurm_run_folder"].value
    modes = dict(line.split() for line in transport.run(
        f"cd {run_dir} && stat -c '%n %a' . * ").stdout.splitlines())
    assert "env.sh" not in modes  # the secrets went, whatever the outcome
    assert modes["."] == "700"  # the run folder is private to the user
    assert {modes[f] for f in ("stdout.log", "stderr.log", "messages.jsonl", "fails.py")} == {"600"}
    assert modes["job.sh"] == "700"
    assert "disk on fire" in transport.run(f"cat {run_dir}/stderr.log").stdout  # the logs stay for debugging
    assert transport.run(f"grep -rl t0ken-xyz {run_dir} || true").stdout.strip() == ""


def test_successful_run_leaves_nothing_behind(slurm, pipes_env, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "trivial.py"), compute)
    assert result.success
    # removed after the step's result (off the critical path), within a short bound; not even an empty folder
    deadline = time.monotonic() + 10
    while transport.stat_size(f"{slurm.remote_base}/runs/{result.run_id}") is not None:
        assert time.monotonic() < deadline, "the run folder was not removed"
        time.sleep(0.05)


def test_a_payload_exception_heads_the_failure_without_our_frames(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "raises.py"), compute)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    first, second = error.message.splitlines()[:2]
    assert first.endswith("FileNotFoundError: /data/input.parquet does not exist")  # the payload's own line
    assert second.startswith("Slurm job ") and second.endswith(" FAILED, exit status 1.")
    assert error.message.count("does not exist") == 1  # not repeated with the traceback
    ours = [frame for frame in error.stack if "/dagster_slurm/" in frame]
    assert len(ours) == 1 and "in run" in ours[0]  # only the public call the asset made, none inside
    meta = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata
    assert "raise FileNotFoundError" in meta["slurm_stderr_tail"].value  # the whole traceback, once


def test_a_queued_job_says_why_at_info_and_reports_its_wait(slurm, pipes_env, payloads, transport):
    """Both CPUs of the node are taken by another job: ours waits (Resources), and says so at INFO."""
    blocker = transport.run("sbatch --parsable -p debug -c 2 --mem=50M -t 1 --wrap 'sleep 8'").stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while transport.run(f"squeue -h -o %T -j {blocker}").stdout.strip() != "RUNNING":
            assert time.monotonic() < deadline, "the blocking job never started"
            time.sleep(0.2)
        compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
        instance = dg.DagsterInstance.ephemeral()
        asset = _asset(payloads / "report.py", extras={"foo": 1}, check=True, resource_requirements={"partition": "debug"})
        result = dg.materialize([asset], resources={"compute": compute}, instance=instance)
    finally:
        transport.run(f"scancel {blocker}", check=False)
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    job_id = meta["slurm_job_id"].value
    info = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.INFO]
    pending = [m for m in info if m.startswith(f"Slurm job {job_id}: PENDING (Resources)")]
    assert pending, info  # RUNNING may pass between two polls of a 1 s job
    # squeue's own estimate (%S) joins that line once Slurm's backfill has made one (often not within these
    # few seconds here; the parsing is tested with a recording)
    # sbatch --test-only, just before the submission, saw the job waiting for the blocker's end (its 1 min limit)
    assert any(m.startswith(f"Slurm expects job {job_id} to start at ") and " in about " in m for m in info), info
    assert meta["slurm_expected_wait_seconds"].value >= 1 and meta["slurm_expected_start"].value[:2] == "20"
    assert not any("None" in m for m in info if m.startswith(f"Slurm job {job_id}:"))
    assert meta["slurm_queue_wait_seconds"].value >= 2


def test_payload_that_never_opens_pipes_says_what_to_call(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "no_pipes.py"), compute)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "open_dagster_pipes()" in text


def test_secret_env_stays_out_of_job_script_and_metadata(slurm, pipes_env, payloads, transport, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    secret = "tOpS3cret-value-42"
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env, debug_mode=True)
    result = _materialize(_asset(payloads / "secret.py", extra_env={"MY_SECRET": secret}), compute)
    assert result.success
    assert secret not in caplog.text  # before the test's own grep below logs it
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert meta["secret_len"].value == len(secret)
    assert all(secret not in str(v.value) for v in meta.values())
    job_id = meta["slurm_job_id"].value
    # debug_mode keeps the run folder (job script, logs), but no file left there holds the secret
    kept = transport.run(f"ls {slurm.remote_base}/runs/{result.run_id}/*/0").stdout.split()
    assert "job.sh" in kept and "env.sh" not in kept
    found = transport.run(f"grep -rl -- {secret} {slurm.remote_base}/runs/{result.run_id} || true").stdout.split()
    assert found == []
    scontrol = transport.run(f"scontrol show job {job_id} || true; sacct -j {job_id} -o JobName,SubmitLine%200 -P"
                             ).stdout
    assert secret not in scontrol
    assert all(secret not in m for m in result.log_messages)


def test_job_failure_states_are_dagster_failures(slurm, pipes_env, payloads):
    """OUT_OF_MEMORY: the job exceeds --mem and Slurm's cgroup kills it."""
    oom = payloads / "oom.py"
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(oom, resource_requirements={"mem": "60M"}), compute)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "OUT_OF_MEMORY" in text


def test_slurm_job_error_type_is_exported():
    assert issubclass(SlurmJobError, dg.Failure)


def test_time_limit_ends_in_timeout_failure(slurm, pipes_env, payloads):
    """Slurm's smallest time limit is one minute: this test takes 1-2 minutes."""
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "sleeps.py", extras={"seconds": 600},
                                 resource_requirements={"time_limit": "1"}), compute)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "TIMEOUT" in text and "time limit" in text


def test_accounting_down_still_reports_the_run_at_once(slurm, pipes_env, payloads):
    """slurmdbd stopped by its pid: the job's end is reported without waiting for sacct, metrics marked missing."""
    import subprocess
    import time

    from conftest import CLUSTER_SCRIPT

    with open("/run/slurmdbd.pid") as fh:
        pid = int(fh.read().strip())
    os.kill(pid, signal.SIGTERM)
    try:
        compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
        started = time.monotonic()
        result = _materialize(_asset(payloads / "trivial.py"), compute)
        elapsed = time.monotonic() - started
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "start"], check=True, capture_output=True, timeout=300)
    assert result.success, result.log_messages[-20:]
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert meta["value"].value == 42
    assert meta["slurm_accounting"].value.startswith("unavailable")
    assert elapsed < 30


def test_extras_beyond_an_environment_variables_limit(slurm, pipes_env, payloads, transport):
    blob = "x" * 300_000 + "the-end!"  # > 128 KiB, Linux's limit for one environment variable
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env, debug_mode=True)
    result = _materialize(_asset(payloads / "big_extras.py", extras={"blob": blob}), compute)
    assert result.success, result.log_messages[-10:]
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert (meta["blob_len"].value, meta["blob_tail"].value) == (len(blob), "the-end!")
    left = transport.run(f"ls {slurm.remote_base}/runs/{result.run_id}/*/0").stdout.split()
    assert "context.json" not in left and "env.sh" not in left  # removed once the job ended


def test_environment_that_cannot_be_activated_records_exit_97(slurm, payloads, transport, remote_base):
    broken = f"{remote_base}/envs/broken-activate"
    transport.run(f"mkdir -p {broken}/env && printf 'echo activation exploded >&2; return 3\\n' > {broken}/activate.sh")
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=broken)
    result = _materialize(_asset(payloads / "trivial.py"), compute)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "exit status 97: its environment could not be set up" in failure.error.message
    assert "activation exploded" in failure.user_failure_data.metadata["slurm_stderr_tail"].value


@pytest.mark.parametrize("share", ["direct", "auto"])
def test_resource_teardown_closes_the_connection(slurm, pipes_env, payloads, share):
    from dagster_slurm import SlurmResource
    from dagster_slurm.agent import transport_for

    slurm = SlurmResource(ssh=type(slurm.ssh)(**{**slurm.ssh.model_dump(), "share_connection": share}),
                          remote_base=slurm.remote_base, queue=slurm.queue)
    transport = transport_for(slurm.ssh.settings())  # the one the runs below use
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    before = transport.stats.connections
    assert _materialize(_asset(payloads / "trivial.py"), compute).success
    if share == "direct":
        assert transport._conn is None  # closed when Dagster tore the resource down, not left to process exit
    else:
        assert transport._idle == []  # this process's sockets to the agent; the agent stays for others
    assert _materialize(_asset(payloads / "trivial.py"), compute).success  # the next run reconnects
    if share == "direct":
        assert transport.stats.connections >= before + 1


def test_gpus_asked_for_are_scheduled_and_reported_from_sacct(slurm, pipes_env, payloads):
    """The test cluster declares GPUs as a GRES; --gpus-per-node is scheduled and sacct's AllocTRES gives the
    count the materialization carries."""
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "report.py", extras={"foo": 1}, check=True,
                                 resource_requirements={"gpus_per_node": 2}), compute)
    assert result.success, result.log_messages[-10:]
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert meta["slurm_gpus"].value == 2
    plain = _materialize(_asset(payloads / "report.py", extras={"foo": 1}, check=True), compute)
    assert "slurm_gpus" not in plain.asset_materializations_for_node("reporter")[0].metadata


class _Recording:
    """The real transport, with the commands run through it written down."""

    def __init__(self, inner):
        self.inner, self.commands = inner, []

    def run(self, command, **kw):
        self.commands.append(command)
        return self.inner.run(command, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_watcher_polls_states_only_where_the_cluster_has_it(transport):
    """Slurm >= 24.05 (squeue --help lists --only-job-state): each tick asks the cheap query, the pending job alone
    the full one for its reason; older releases keep the full query. The job's life reads the same either way."""
    from dagster_slurm.slurm.watcher import STATES_ONLY, JobHandle, JobWatcher

    has = STATES_ONLY in transport.run("squeue --help").stdout
    blocker = transport.run("sbatch --parsable -p debug -c 2 --mem=50M -t 1 --wrap 'sleep 30'").stdout.strip()
    job = None
    try:
        deadline = time.monotonic() + 30
        while transport.run(f"squeue -h -o %T -j {blocker}").stdout.strip() != "RUNNING":
            assert time.monotonic() < deadline, "the blocking job never started"
            time.sleep(0.2)
        job = transport.run("sbatch --parsable -p debug -c 1 --mem=50M -t 1 --wrap 'true'").stdout.strip()
        recording = _Recording(transport)
        watcher, blocking, waiting = JobWatcher(recording), JobHandle(blocker), JobHandle(job)
        deadline, ticks = time.monotonic() + 30, 0
        while ticks < 5 or not (blocking.state == "RUNNING" and waiting.state == "PENDING"):
            assert time.monotonic() < deadline, (blocking.state, waiting.state, waiting.reason)
            watcher.tick([blocking, waiting])
            ticks += 1
            time.sleep(0.2)
        # its reason comes once the scheduler has looked at it (up to a backfill cycle here); the INFO line
        # that says it is test_a_queued_job_says_why_at_info_and_reports_its_wait's
        assert waiting.reason in ("", "Resources", "Priority") and blocking.reason == ""
        squeues = [c for c in recording.commands if c.startswith("squeue ")]
        full = [c for c in squeues if STATES_ONLY not in c]
        if has:
            assert all(c.endswith(f"-j {blocker},{job}") for c in squeues if STATES_ONLY in c)
            assert full and all(c.endswith(f"-j {job}") for c in full)  # the running job: never the full query
            assert len(squeues) - len(full) >= len(full)  # one cheap query per tick
        else:
            assert full == squeues and all(c.endswith(f"-j {blocker},{job}") for c in full)
    finally:
        transport.run(f"scancel {blocker} {job or ''}", check=False)
    deadline = time.monotonic() + 60
    while not (blocking.done.is_set() and waiting.done.is_set()):
        assert time.monotonic() < deadline, (blocking.state, waiting.state)
        watcher.tick([h for h in (blocking, waiting) if not h.done.is_set()])
        time.sleep(0.5)
    assert blocking.final.state == waiting.final.state == "CANCELLED"
