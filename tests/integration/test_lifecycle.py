"""Exactly one Slurm job per step attempt across crashes and re-executions; terminate cancels, a crash does not.

Each test drives real orchestrator processes (reexec_job.py: a DagsterInstance on disk, the multiprocess
executor), kills their whole process tree with SIGKILL and re-executes from failure through Dagster's
public API; jobs are counted in sacct by job name.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
from cluster_jobs import jobs_named
from faults import cut_ssh_connections

pytestmark = pytest.mark.cluster

HERE = os.path.dirname(__file__)
SLEEPS = os.path.join(HERE, "..", "payloads", "sleeps.py")


class Orchestrator:
    """One asset job's orchestrator processes for one test: start, kill -9, re-execute, inspect."""

    def __init__(self, cluster_env, remote_base, pipes_env, home, payload=SLEEPS, seconds=8.0, prefix="sleeper",
                 script="reexec_job.py", **env):
        self.script = script
        self.asset = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.job_name = f"dagster-{self.asset}"
        self.home = str(home)
        self.env = {**os.environ, **cluster_env, "DAGSTER_HOME": self.home, "TEST_ASSET": self.asset,
                    "TEST_PAYLOAD": str(payload), "TEST_SECONDS": str(seconds), "TEST_REMOTE_BASE": remote_base,
                    "TEST_ENV": pipes_env, **env}
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def start(self, mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, os.path.join(HERE, self.script), mode], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def finish(self, mode: str, timeout: float = 180) -> str:
        proc = self.start(mode)
        out, _ = proc.communicate(timeout=timeout)
        return out

    @staticmethod
    def kill_tree(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and its step processes, no cleanup
        proc.communicate(timeout=30)

    def jobs(self, transport) -> list[tuple[str, str]]:
        """(job id, state) of every job of this test's asset, from sacct."""
        return jobs_named(transport, self.job_name)

    def wait_job(self, transport, states, timeout=90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(transport)
            if jobs and jobs[-1][1].split(" ")[0] in states:
                return jobs[-1][0]
            time.sleep(0.3)
        raise AssertionError(f"no job of {self.asset} reached {states}: {self.jobs(transport)}")

    def latest_run(self):
        instance = dg.DagsterInstance.from_config(self.home)
        return instance, instance.get_runs(limit=1)[0]

    def messages(self) -> list[str]:
        instance, run = self.latest_run()
        return [e.user_message for e in instance.all_logs(run.run_id)]

    def metadata(self) -> dict:
        instance, run = self.latest_run()
        events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert len(events) == 1, [e.user_message for e in instance.all_logs(run.run_id)][-20:]
        return {k: v.value for k, v in events[0].asset_materialization.metadata.items()}


@pytest.fixture
def orchestrator(cluster_env, remote_base, pipes_env, tmp_path):
    created = []

    def make(**kw) -> Orchestrator:
        home = tmp_path / f"home{len(created)}"
        home.mkdir()
        created.append(Orchestrator(cluster_env, remote_base, pipes_env, home, **kw))
        return created[-1]

    return make


def test_reexecution_after_a_crash_reattaches_to_the_running_job(orchestrator, transport):
    o = orchestrator(seconds=15)
    first = o.start("run")
    job_id = o.wait_job(transport, {"RUNNING"})
    o.kill_tree(first)
    time.sleep(1)
    assert o.wait_job(transport, {"RUNNING"}) == job_id  # the crash did not cancel it

    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    _, run = o.latest_run()
    assert run.parent_run_id and run.root_run_id  # a real re-execution: new run id, same root
    assert any(f"Reattaching to Slurm job {job_id} submitted by run {run.root_run_id}" in m for m in o.messages()), \
        "\n".join(o.messages())
    assert not any("Submitted Slurm job" in m for m in o.messages())
    assert o.metadata()["slept"] == 15 and o.metadata()["slurm_job_id"] == job_id
    assert o.jobs(transport) == [(job_id, "COMPLETED")]


def test_job_that_finished_while_no_orchestrator_ran_is_adopted(orchestrator, transport):
    o = orchestrator(seconds=5)
    first = o.start("run")
    job_id = o.wait_job(transport, {"RUNNING"})
    o.kill_tree(first)
    assert o.wait_job(transport, {"COMPLETED"}) == job_id

    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    assert any(f"Adopting Slurm job {job_id}" in m for m in o.messages())
    assert o.metadata()["slept"] == 5
    assert o.jobs(transport) == [(job_id, "COMPLETED")]


def test_changed_payload_submits_anew_and_names_the_old_job(orchestrator, transport, tmp_path):
    payload = tmp_path / "sleeps.py"
    payload.write_text(open(SLEEPS).read())
    o = orchestrator(payload=payload, seconds=30)
    first = o.start("run")
    old = o.wait_job(transport, {"RUNNING"})
    o.kill_tree(first)
    payload.write_text(open(SLEEPS).read() + "\n# changed\n")
    o.env["TEST_SECONDS"] = "1"  # and the inputs changed too
    try:
        out = o.finish("reexec")
        assert out.strip().endswith("SUCCESS"), out[-3000:]
        warnings = [m for m in o.messages() if f"Slurm job {old} " in m and f"scancel {old}" in m]
        assert warnings, o.messages()[-20:]
        new = o.metadata()["slurm_job_id"]
        assert new != old
        assert dict(o.jobs(transport))[old] == "RUNNING"  # never cancelled on the user's behalf
        assert len(o.jobs(transport)) == 2
    finally:
        transport.run(f"scancel {old}", check=False)


def _step_processes(orchestrator_pid: int) -> list[int]:
    """The multiprocess executor's step processes under the orchestrator (not multiprocessing's helpers)."""
    out = subprocess.run(["pgrep", "-P", str(orchestrator_pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()
            if "resource_tracker" not in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]


@pytest.mark.parametrize("how", ["run SIGINT", "step SIGTERM"])
def test_terminate_cancels_and_its_reexecution_submits_anew(orchestrator, transport, how):
    o = orchestrator(seconds=120)
    first = o.start("run")
    job_id = o.wait_job(transport, {"RUNNING"})
    if how == "run SIGINT":
        os.killpg(first.pid, signal.SIGINT)  # what Dagster's run termination delivers to the step process
    else:  # the step process alone is told to stop (a supervisor, a k8s-style SIGTERM)
        steps = _step_processes(first.pid)
        assert steps, "no step process found: the fault cannot be injected"
        for pid in steps:
            os.kill(pid, signal.SIGTERM)
    out, _ = first.communicate(timeout=90)
    # once the orchestrator is gone, so is the job: the terminate waited until squeue dropped it
    deadline = time.monotonic() + 10
    while transport.run(f"squeue -h -j {job_id} -o %T || true").stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still queued after the terminate\n--- orchestrator output:\n{out[-6000:]}")
        time.sleep(0.3)
    assert [s.split(" ")[0] for j, s in o.jobs(transport) if j == job_id] == ["CANCELLED"], out[-3000:]
    env_files = transport.run(f"ls {o.env['TEST_REMOTE_BASE']}/runs/*/{o.asset}-*/*/env.sh 2>/dev/null || true")
    assert env_files.stdout.strip() == "", out[-4000:]  # a terminated run leaves no secrets behind

    o.env["TEST_SECONDS"] = "1"  # any payload: a terminated step's job is never reused
    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    jobs = o.jobs(transport)
    assert len(jobs) == 2 and jobs[0] == (job_id, "CANCELLED") and jobs[1][1] == "COMPLETED"


def _wait_file(path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_crash_between_sbatch_and_the_ledger_finds_the_job(orchestrator, transport, misbehaving_sbatch):
    """sbatch submitted, then the orchestrator died before the ledger line was written: the
    re-execution finds the job by name and run folder, records it, and reattaches. One job."""
    o = orchestrator(seconds=10, prefix="sbatch_orphans")
    first = o.start("run")
    _wait_file(misbehaving_sbatch.marker)
    o.kill_tree(first)
    job_id = o.wait_job(transport, {"PENDING", "RUNNING"})

    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    messages = o.messages()
    assert any(m.startswith(f"Slurm job {job_id} of ") and "missing from the ledger" in m for m in messages)
    assert any(f"Slurm job {job_id} submitted by run" in m for m in messages)  # reattached or adopted
    assert o.metadata()["slurm_job_id"] == job_id
    assert o.jobs(transport) == [(job_id, "COMPLETED")]


def test_crash_during_an_sbatch_that_never_submitted_submits_once(orchestrator, transport, misbehaving_sbatch):
    """The orchestrator died while its sbatch hung without submitting: the re-execution closes that
    attempt, waits out the sbatch's cluster-side timeout, finds no job, and submits exactly one."""
    o = orchestrator(seconds=1, prefix="sbatch_never")
    o.env["TEST_COMMAND_TIMEOUT"] = "4"
    first = o.start("run")
    _wait_file(misbehaving_sbatch.marker)
    o.kill_tree(first)
    misbehaving_sbatch.remove()  # the cluster's sbatch works again
    assert o.jobs(transport) == []
    out = o.finish("reexec")
    assert out.strip().endswith("SUCCESS"), out[-3000:]
    assert any("was left unfinished" in m and "submitted no job" in m for m in o.messages()), o.messages()
    assert [state for _, state in o.jobs(transport)] == ["COMPLETED"]


@pytest.mark.parametrize("share", ["direct", "auto"])
def test_dropped_ssh_connection_is_reopened_and_the_run_finishes(slurm, pipes_env, payloads, share):
    """Kill the sshd processes serving the test user mid-run: the run (or the agent) reconnects and succeeds."""
    import threading

    from dagster_slurm import ComputeResource, SlurmResource
    from dagster_slurm.agent import transport_for
    from dagster_slurm.agent.spawn import paths
    from dagster_slurm.cli.agent import _call

    slurm = SlurmResource(ssh=type(slurm.ssh)(**{**slurm.ssh.model_dump(), "share_connection": share}),
                          remote_base=slurm.remote_base, queue=slurm.queue)
    transport = transport_for(slurm.ssh.settings())  # the one the run below uses

    def logins() -> int:
        if share == "direct":
            return transport.stats.connections
        return _call(paths(slurm.ssh.settings())[0], "status")["ssh_logins"]

    @dg.asset
    def sleeper(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "sleeps.py"),
                           extras={"seconds": 4}).get_results()

    transport.run("true")
    connections_before = logins()

    cut = []

    def drop_connection():
        time.sleep(2.0)  # the job is running by now
        cut.append(cut_ssh_connections("slurmuser"))

    killer = threading.Thread(target=drop_connection)
    killer.start()
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([sleeper], resources={"compute": compute}, raise_on_error=False)
    killer.join()
    assert cut[0] > 0, "no SSH connection was cut: the fault did not happen"
    assert result.success, [e.step_failure_data.error.message for e in result.get_step_failure_events()]
    assert result.asset_materializations_for_node("sleeper")[0].metadata["slept"].value == 4
    assert logins() > connections_before  # it did reconnect
