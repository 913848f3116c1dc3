"""End to end on the real test cluster: an asset runs as a Slurm job over SSH with Dagster Pipes."""

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
    asset = _asset(payloads / "report.py", extras={"foo": 7}, extra_env={"K": "v"}, check=True,
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
    assert "slurm_node_hours" in meta and "slurm_elapsed" in meta
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("positive", True)]
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
    text = str(failure.message) + "".join(c.error.message for c in (failure.cause,) if c) if failure else ""
    assert "FAILED" in text and "3:0" in text
    assert "disk on fire" in text
    meta = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata
    assert meta["slurm_state"].value == "FAILED" and isinstance(meta["slurm_elapsed_seconds"].value, int)
    assert meta["slurm_max_rss_bytes"].value > 0 and "slurm_node_hours" in meta
    run_dir = meta["slurm_run_folder"].value
    assert isinstance(meta["slurm_stderr"], dg.PathMetadataValue) and meta["slurm_stderr"].value == f"{run_dir}/stderr.log"
    assert meta["slurm_stdout"].value == f"{run_dir}/stdout.log"


def test_failed_run_keeps_its_logs_private_and_drops_its_env_file(slurm, pipes_env, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = _materialize(_asset(payloads / "fails.py", extra_env={"TOKEN": "t0ken-xyz"}), compute)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    run_dir = text.split("stay on the cluster in ")[1].split(" ")[0]
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
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "status 97" in text and "activation exploded" in text and "could not be set up" in text


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
