"""Settings, environment variables and call arguments as users of the other dagster-slurm spell them (our own
tests): aliases work, what we do not implement is an error naming what we offer instead."""

import pytest

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource
from dagster_slurm.compute.options import resolve_run_options
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.slurm.script import JobScript, from_extra_slurm_opts, queue_directives, render_job_script
from dagster_slurm.transport.base import absolute_path


@pytest.mark.parametrize(("make", "name", "hint"), [
    (lambda: ComputeResource(mode="local", signal_before_timeout="TERM@60"), "signal_before_timeout", "SlurmQueueConfig setting"),
    (lambda: SlurmQueueConfig(session="s"), "session", "SlurmAllocation"),
    (lambda: SSHConnectionResource(host="h", force_tty=True), "force_tty", "dagster-slurm login"),
    (lambda: SSHConnectionResource(host="h", post_login_command="module load x"), "post_login_command", "activate.sh"),
    (lambda: SlurmResource(ssh=SSHConnectionResource(host="h"), status_poll_backoff=2), "status_poll_backoff",
     "poll_interval"),
    (lambda: ComputeResource(mode="local", pack_on_remote=True), "pack_on_remote", "packer"),
])
def test_settings_we_do_not_implement_are_errors(make, name, hint):
    with pytest.raises(Exception, match=rf"has no setting '{name}' \(.*{hint}") as info:
        make()
    assert "Its settings:" in str(info.value)


def test_extra_slurm_opts_map_to_our_requirements():
    opts = from_extra_slurm_opts({"nodes": 2, "cpus_per_task": 4, "mem": "8G", "time": "00:30:00", "gres": "gpu:1",
                                  "qos": "high", "exclusive": True})
    directives = queue_directives({"time_limit": "01:00:00", "cpus": 1}, opts)
    assert directives == {"nodes": "2", "cpus-per-task": "4", "mem": "8G", "time": "00:30:00", "qos": "high",
                          "gres": "gpu:1", "exclusive": ""}
    script = render_job_script(JobScript("j", "/r", ["true"], directives))
    assert "#SBATCH --exclusive\n" in script and "#SBATCH --gres=gpu:1\n" in script
    with pytest.raises(ConfigurationError, match="unknown sbatch option 'no-such-option'"):
        queue_directives({}, from_extra_slurm_opts({"no_such_option": 1}))


def test_empty_partition_means_the_cluster_default():
    assert "partition" not in queue_directives(SlurmQueueConfig(partition="").model_dump(), {"partition": ""})


def test_their_metadata_keys_for_payload_placement():
    options = resolve_run_options({}, None, {"skip_slurm_payload_upload": True, "slurm_payload_path": "/x/p.py"}, {})
    assert options.skip_payload_upload and options.remote_payload_path == "/x/p.py"
    ours = resolve_run_options({}, None, {"slurm_remote_payload_path": "/ours.py", "slurm_payload_path": "/x.py"}, {})
    assert ours.remote_payload_path == "/ours.py"


@pytest.mark.parametrize(("path", "expected"), [
    ("$HOME/dagster_runs", "/home/u/dagster_runs"), ("${HOME}/runs", "/home/u/runs"), ("~/r", "/home/u/r"),
    ("rel", "/home/u/rel"), ("/abs", "/abs"), ("$HOME", "/home/u"),
])
def test_remote_paths_expand_home(path, expected):
    assert absolute_path(lambda: "/home/u", path) == expected


def test_other_shell_variables_in_remote_paths_are_refused():
    with pytest.raises(ConfigurationError, match="only a leading ~ or \\$HOME"):
        absolute_path(lambda: "/home/u", "$SCRATCH/runs")


def test_their_environment_variables(monkeypatch):
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "login")
    monkeypatch.delenv("SLURM_EDGE_NODE_KNOWN_HOSTS", raising=False)
    monkeypatch.setenv("SLURM_EDGE_NODE_KNOWN_HOSTS_FILE", "/theirs")
    for name in ("SLURM_DEPLOYMENT_BASE_PATH", "SLURM_EDGE_NODE_KEY_PATH", "SLURM_EDGE_NODE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_REMOTE_BASE", "/scratch/u")
    for var, value in (("SLURM_PARTITION", "gpu"), ("SLURM_CPUS", "4"), ("SLURM_MEM", "8G"), ("SLURM_TIME", "00:10:00")):
        monkeypatch.setenv(var, value)
    slurm = SlurmResource.from_env()
    assert slurm.ssh.known_hosts_file == "/theirs" and slurm.remote_base == "/scratch/u"
    assert (slurm.queue.partition, slurm.queue.cpus, slurm.queue.mem, slurm.queue.time_limit) == \
        ("gpu", 4, "8G", "00:10:00")
    monkeypatch.setenv("SLURM_EDGE_NODE_KNOWN_HOSTS", "/ours")
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", "/ours-base")
    slurm = SlurmResource.from_env()
    assert slurm.ssh.known_hosts_file == "/ours" and slurm.remote_base == "/ours-base"  # ours win
    assert SSHConnectionResource.from_env(prefix="SLURM_EDGE_NODE").host == "login"  # their prefix spelling


def test_a_launcher_subclass_decides_the_command(tmp_path):
    import sys

    import dagster as dg

    from dagster_slurm import Launcher

    class MarkingLauncher(Launcher):
        marker: str

        def command(self, payload, *, local):
            return [sys.executable, "-c", "import os, runpy, sys; os.environ['MARK'] = sys.argv[1]; "
                    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')", self.marker, payload]

    payload = tmp_path / "p.py"
    payload.write_text("import os\nfrom dagster_pipes import open_dagster_pipes\nwith open_dagster_pipes() as p:\n"
                       "    p.report_asset_materialization(metadata={'mark': os.environ['MARK']})\n")
    config = tmp_path / "settings.txt"
    config.write_text("x")

    @dg.asset
    def marked(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload), launcher=MarkingLauncher(marker="m1"),
                           extra_files=[str(config)]).get_results()

    result = dg.materialize([marked], resources={"compute": ComputeResource(mode="local")})
    assert result.asset_materializations_for_node("marked")[0].metadata["mark"].value == "m1"
    with pytest.raises(NotImplementedError, match="must define command"):
        Launcher().command("p.py", local=True)


def test_extra_files_keep_relative_names_and_refuse_reserved_ones(tmp_path, monkeypatch):
    from dagster_slurm.compute.resource import extra_file_uploads

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text("a: 1")
    (tmp_path / "env.sh").write_text("")
    uploads, digest = extra_file_uploads(["conf/a.yaml", str(tmp_path / "conf" / "a.yaml").replace("a.yaml", "a.yaml")])
    assert [n for _, n in uploads] == ["conf/a.yaml", "a.yaml"] and digest
    with pytest.raises(ConfigurationError, match="a name the library uses"):
        extra_file_uploads(["env.sh"])
    with pytest.raises(ConfigurationError, match="is not a file"):
        extra_file_uploads(["missing.txt"])
