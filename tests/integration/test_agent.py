"""The connection agent against the real test cluster: one login shared by many processes, one-time-code
logins through `dagster-slurm login`, a killed agent replaced mid-run, peer credentials, idle timeout."""



import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import dagster as dg
import pytest

from dagster_slurm import ComputeResource

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
TRIVIAL = os.path.join(HERE, "..", "payloads", "trivial.py")
SLEEPS = os.path.join(HERE, "..", "payloads", "sleeps.py")
CLI = [sys.executable, "-m", "dagster_slurm.cli.main"]
TESTCLUSTER_DIR = "/var/lib/dagster-slurm-testcluster"


@pytest.fixture
def runtime_dir(monkeypatch):
    """A private agent folder per test (short: socket paths are limited to ~100 bytes)."""
    from dagster_slurm.agent import sessions

    path = tempfile.mkdtemp(prefix="dsa-", dir="/tmp")
    monkeypatch.setenv("DAGSTER_SLURM_RUNTIME_DIR", path)
    sessions.close_all()
    yield path
    sessions.close_all()
    subprocess.run(CLI + ["agent", "stop"], env={**os.environ, "DAGSTER_SLURM_RUNTIME_DIR": path},
                   capture_output=True, timeout=60)
    shutil.rmtree(path, ignore_errors=True)


def _resource(cluster_env, **kw):
    from dagster_slurm import SSHConnectionResource

    args = dict(host=cluster_env["SLURM_EDGE_NODE_HOST"], port=int(cluster_env["SLURM_EDGE_NODE_PORT"]),
                user=cluster_env["SLURM_EDGE_NODE_USER"], key_path=cluster_env["SLURM_EDGE_NODE_KEY_PATH"],
                known_hosts_file=cluster_env["TESTCLUSTER_KNOWN_HOSTS"], connect_timeout=10)
    args.update(kw)
    return SSHConnectionResource(**args)


def _status(settings) -> dict:
    from dagster_slurm.agent.spawn import paths
    from dagster_slurm.cli.agent import _call

    return _call(paths(settings)[0], "status")


def _accepted(log: str, what: str) -> int:
    with open(log, errors="replace") as fh:
        return sum(what in line for line in fh)


def _env(cluster_env, runtime_dir, **extra) -> dict:
    return {**os.environ, **cluster_env, "DAGSTER_SLURM_RUNTIME_DIR": runtime_dir,
            "SLURM_EDGE_NODE_KNOWN_HOSTS": cluster_env["TESTCLUSTER_KNOWN_HOSTS"], **extra}


CLIENT = textwrap.dedent("""
    import sys
    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.agent import transport_for, watcher_for
    t = transport_for(SSHConnectionResource.from_env(connect_timeout=10).settings())
    assert type(t).__name__ == "AgentTransport", type(t)
    t.probe("uname -m")
    job = t.run("sbatch --parsable --mem=32M -t 1 -J agent-share --wrap 'sleep 1'").stdout.strip()
    h = watcher_for(t).watch(job)
    assert h.wait(120), "no end"
    print("STATE", h.state, flush=True)
""")


def test_many_processes_share_one_login_and_one_watcher(cluster_env, runtime_dir):
    """12 processes start at once with no agent running: exactly one agent starts, the SSH server sees
    one login, every job is watched by the agent's one watcher and every process sees its job end."""
    sshd_log = os.path.join(TESTCLUSTER_DIR, "sshd.log")
    before = _accepted(sshd_log, "Accepted publickey for slurmuser")
    env = _env(cluster_env, runtime_dir)
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(12)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all("STATE COMPLETED" in out for out in outs), outs
    status = _status(_resource(cluster_env).settings())
    assert status["ssh_logins"] == 1, status
    assert status["jobs_watched_total"] == 12 and status["clients_total"] >= 12, status
    assert _accepted(sshd_log, "Accepted publickey for slurmuser") - before == 1
    socks = [n for n in os.listdir(runtime_dir) if n.endswith(".sock")]
    assert len(socks) == 1 and os.stat(os.path.join(runtime_dir, socks[0])).st_mode & 0o777 == 0o600


def _otp_env(cluster_env, runtime_dir) -> dict:
    return _env(cluster_env, runtime_dir, SLURM_EDGE_NODE_PORT=cluster_env["TESTCLUSTER_OTP_PORT"])


def _code() -> str:
    return subprocess.run([os.path.join(TESTCLUSTER_DIR, "otp_code")], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_one_time_code_login_is_shared_by_later_multiprocess_runs(cluster_env, runtime_dir, remote_base,
                                                                   pipes_env, tmp_path):
    env = _otp_env(cluster_env, runtime_dir)
    otp_log = cluster_env["TESTCLUSTER_OTP_SSHD_LOG"]
    before = _accepted(otp_log, "Accepted keyboard-interactive/pam for slurmuser")

    # No login yet: a run fails at once, saying what to do (never a hang, never a prompt nobody sees).
    started = time.monotonic()
    probe = [sys.executable, "-c", "from dagster_slurm import SSHConnectionResource as R\n"
             "from dagster_slurm.agent import transport_for\n"
             "transport_for(R.from_env().settings()).run('true')"]
    failed = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "dagster-slurm login" in failed.stderr, failed.stderr[-2000:]
    assert "One-time password" in failed.stderr
    assert time.monotonic() - started < 30

    # The person logs in once, typing the code.
    login = subprocess.run(CLI + ["login"], env=env, input=_code() + "\n", capture_output=True, text=True,
                           timeout=120)
    assert login.returncode == 0 and "Logged in" in login.stdout, login.stderr[-2000:]

    # Two multi-step runs with a process per step: no further code, one login on the server. The second
    # with slurm_executor (step processes forked from a preloaded forkserver), every step in one allocation.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    job_env = {**env, "DAGSTER_HOME": str(home), "TEST_ASSETS": "3", "TEST_CONCURRENCY": "3",
               "TEST_PAYLOAD": TRIVIAL, "TEST_REMOTE_BASE": remote_base, "TEST_ENV": pipes_env}
    for more, in_allocation in (({}, 0), ({"TEST_EXECUTOR": "slurm", "TEST_ALLOCATION_CPUS": "2"}, 3)):
        run = subprocess.run([sys.executable, os.path.join(HERE, "multi_job.py")], env={**job_env, **more},
                             capture_output=True, text=True, timeout=400)
        assert run.stdout.strip().endswith("SUCCESS"), (run.stdout + run.stderr)[-4000:]
        assert f"IN_ALLOCATION {in_allocation}\n" in run.stdout, run.stdout[-2000:]
    assert _accepted(otp_log, "Accepted keyboard-interactive/pam for slurmuser") - before == 1

    status = subprocess.run(CLI + ["agent", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert "connected" in status.stdout and "SSH logins 1" in status.stdout, status.stdout
    again = subprocess.run(CLI + ["login"], env=env, capture_output=True, text=True, timeout=60)
    assert "Already logged in" in again.stdout

    # Once the agent is gone, a run fails at once again, naming the fix.
    stop = subprocess.run(CLI + ["agent", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "Stopped agent" in stop.stdout
    failed = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "dagster-slurm login" in failed.stderr


def test_otp_command_answers_the_code_prompt(cluster_env, runtime_dir):
    from dagster_slurm.agent import transport_for

    otp_log = cluster_env["TESTCLUSTER_OTP_SSHD_LOG"]
    before = _accepted(otp_log, "Accepted keyboard-interactive/pam for slurmuser")
    with pytest.warns(UserWarning, match="otp_command is a literal string"):  # a secret in code is flagged
        ssh = _resource(cluster_env, port=int(cluster_env["TESTCLUSTER_OTP_PORT"]),
                        otp_command=os.path.join(TESTCLUSTER_DIR, "otp_code"))
    transport = transport_for(ssh.settings())
    assert transport.run("id -un").stdout.strip() == "slurmuser"
    assert _accepted(otp_log, "Accepted keyboard-interactive/pam for slurmuser") - before == 1
    agent = _status(ssh.settings())
    with open(f"/proc/{agent['pid']}/cmdline", "rb") as fh:
        assert b"otp_code" not in fh.read()  # settings reach the agent on stdin, never in argv


def test_killed_agent_is_replaced_and_the_run_finishes(cluster_env, runtime_dir, remote_base, pipes_env):
    """kill -9 the agent while the job runs: the step's next calls start a new agent, the job is watched
    again, and the asset materializes with its metadata. The job itself never depended on the agent."""
    from dagster_slurm import SlurmQueueConfig, SlurmResource

    ssh = _resource(cluster_env)
    slurm = SlurmResource(ssh=ssh, remote_base=remote_base, queue=SlurmQueueConfig(mem="64M", time_limit="00:05:00"))

    @dg.asset
    def survivor(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=SLEEPS, extras={"seconds": 5}).get_results()

    killed: list[int] = []

    def kill_agent():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-o", "%j %T"], capture_output=True, text=True).stdout
            if any(line.startswith("dagster-survivor-") and line.endswith(" RUNNING") for line in out.splitlines()):
                pid = _status(ssh.settings())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_agent)
    killer.start()
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([survivor], resources={"compute": compute}, raise_on_error=False)
    killer.join()
    assert killed, "the job was never seen running"
    assert result.success, [e.step_failure_data.error.message for e in result.get_step_failure_events()]
    assert result.asset_materializations_for_node("survivor")[0].metadata["slept"].value == 5
    assert _status(ssh.settings())["pid"] != killed[0]


FOREIGN = textwrap.dedent("""
    import json, socket, struct, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    head = s.recv(4)  # the agent answers a foreign uid before it reads anything
    print(s.recv(struct.unpack(">I", head)[0]).decode() if len(head) == 4 else "CLOSED")
    try:
        body = json.dumps({"op": "run", "args": {"command": "id"}}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        print(s.recv(4096) or "CLOSED")
    except OSError:
        print("CLOSED")
""")


def test_agent_refuses_other_users(cluster_env, runtime_dir):
    """Even with the folder and socket opened up, a client of another uid is refused (peer credentials)."""
    from dagster_slurm.agent import transport_for
    from dagster_slurm.agent.spawn import paths

    settings = _resource(cluster_env).settings()
    transport_for(settings).run("true")
    sock = paths(settings)[0]
    os.chmod(runtime_dir, 0o711)
    os.chmod(sock, 0o666)
    try:
        out = subprocess.run(["runuser", "-u", "slurmuser", "--", "python3", "-c", FOREIGN, sock],
                             capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(runtime_dir, 0o700)
        os.chmod(sock, 0o600)
    assert "serves its own user only" in out.stdout, out.stdout + out.stderr
    assert "uid=" not in out.stdout


def test_idle_agent_leaves(cluster_env, runtime_dir):
    from dagster_slurm.agent import transport_for
    from dagster_slurm.agent.spawn import paths

    settings = _resource(cluster_env, agent_idle_timeout=2).settings()
    transport_for(settings).run("true")
    pid = _status(settings)["pid"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    assert not os.path.exists(paths(settings)[0])


def test_auto_falls_back_to_a_direct_connection_when_no_agent_can_run(cluster_env, monkeypatch, caplog):
    from dagster_slurm.agent import sessions, transport_for
    from dagster_slurm.errors import SSHConnectionError
    from dagster_slurm.transport import SSHTransport

    shared = tempfile.mkdtemp(prefix="dsa-open-", dir="/tmp")
    os.chmod(shared, 0o777)  # not private: the agent refuses to put its socket there
    monkeypatch.setenv("DAGSTER_SLURM_RUNTIME_DIR", shared)
    sessions.close_all()
    try:
        transport = transport_for(_resource(cluster_env).settings())
        assert isinstance(transport, SSHTransport)
        assert transport.run("echo ok").stdout.strip() == "ok"
        assert "connects directly" in caplog.text and "not a private folder" in caplog.text
        with pytest.raises(SSHConnectionError, match="share_connection='agent'"):
            transport_for(_resource(cluster_env, share_connection="agent").settings())
    finally:
        sessions.close_all()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("share", ["direct", "auto"])
def test_job_end_noticed_within_moments_of_its_exit_file(cluster_env, runtime_dir, share):
    """The exit file the job script writes last is watched on the cluster by one remote loop: the
    waiter learns of the end (and the exit code) well before the next squeue poll would have."""
    from dagster_slurm.agent import transport_for, watcher_for

    transport = transport_for(_resource(cluster_env, share_connection=share).settings())
    folder = transport.absolute(f"dagster-slurm-tests/exits-{os.getpid()}-{share}")
    transport.mkdir_p(folder)
    exit_file = f"{folder}/exit_code"
    job = transport.run(f"sbatch --parsable --mem=32M -t 1 -o /dev/null --wrap 'sleep 2; printf \"3\\n\" > "
                        f"{exit_file}.tmp && mv {exit_file}.tmp {exit_file}; sleep 5'").stdout.strip()
    watcher = watcher_for(transport, 0.1, 10.0)
    handle = watcher.watch(job, exit_file=exit_file)
    try:
        assert handle.exited.wait(60), "the exit file was never noticed"
        lag = time.time() - os.stat(exit_file).st_mtime  # the cluster is this machine: one clock
        assert handle.exit_code == 3
        assert lag < 0.5, lag
        assert not handle.done.is_set()  # the job itself still runs (sleep 5): only the exit file was seen
    finally:
        watcher.forget(job)
        transport.run(f"scancel {job}; rm -rf {folder}", check=False)
