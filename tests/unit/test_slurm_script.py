"""script.py: queue_directives and render_job_script.

tests/data/slurm/job_script_expected.sh was rendered by render_job_script from SNAPSHOT_JOB below
and submitted unchanged with ``sbatch`` on the Slurm 22.05.8 test cluster (job 317): sbatch took
the quoted #SBATCH lines (JobName=dagster asset's run, WorkDir=/home/slurmuser/rec/run dir,
Comment=it's a "quoted" comment), the job COMPLETED (tests/data/slurm/sacct_rendered_script.txt),
printed "hello world" to "run dir/stdout.log" and wrote 0 to "run dir/exit_code".
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_slurm.config.queue import KNOWN_SBATCH_OPTIONS, SlurmQueueConfig
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.slurm.script import (
    REQUIREMENT_KEYS,
    JobScript,
    job_name,
    queue_directives,
    render_job_script,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"

SNAPSHOT_QUEUE = {
    "partition": "debug", "time_limit": "00:05:00", "cpus": 1, "mem": "100M", "gpus_per_node": 0,
    "num_nodes": 1, "extra_sbatch_options": {"comment": "it's a \"quoted\" comment"},
}


def snapshot_job() -> JobScript:
    return JobScript(
        job_name="dagster asset's run",
        run_dir="/home/slurmuser/rec/run dir/",
        command=["python3", "-c", "import sys; print('hello world'); sys.exit(0)"],
        directives=queue_directives(SNAPSHOT_QUEUE),
        env_file="/home/slurmuser/rec/run dir/env.sh",
        activate="/home/slurmuser/rec/run dir/activate.sh",
    )


def sbatch_directives(script: str) -> list[list[str]]:
    """#SBATCH lines split the way a shell would split them."""
    return [shlex.split(line[len("#SBATCH "):]) for line in script.splitlines() if line.startswith("#SBATCH ")]


# --- render_job_script ---------------------------------------------------------------------------

def test_render_matches_recorded_snapshot():
    assert render_job_script(snapshot_job()) == (DATA / "job_script_expected.sh").read_text()


def test_render_is_deterministic():
    assert render_job_script(snapshot_job()) == render_job_script(snapshot_job())


def test_rendered_directives_are_shell_quoted():
    script = render_job_script(snapshot_job())
    options = dict(arg[0][2:].split("=", 1) for arg in sbatch_directives(script))
    assert all(len(arg) == 1 for arg in sbatch_directives(script))  # one word per #SBATCH line
    assert options["job-name"] == "dagster asset's run"
    assert options["comment"] == 'it\'s a "quoted" comment'
    assert options["chdir"] == "/home/slurmuser/rec/run dir"  # trailing slash dropped
    assert options["output"] == "/home/slurmuser/rec/run dir/stdout.log"
    assert options["error"] == "/home/slurmuser/rec/run dir/stderr.log"
    assert options["time"] == "00:05:00" and options["mem"] == "100M" and options["partition"] == "debug"
    assert "gpus-per-node" not in options  # 0 GPUs -> no directive
    # directives are sorted and all come before the first command
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert sbatch == list(range(1, len(sbatch) + 1))
    assert [lines[i].split("=")[0] for i in sbatch] == sorted(lines[i].split("=")[0] for i in sbatch)


def test_rendered_command_is_quoted():
    script = render_job_script(snapshot_job())
    command_line = next(line.strip() for line in script.splitlines() if line.strip().startswith("python3"))
    assert shlex.split(command_line) == ["python3", "-c", "import sys; print('hello world'); sys.exit(0)"]


def test_fixed_directives_win_over_user_directives():
    job = JobScript("name", "/r", ["true"], directives={"job-name": "other", "output": "/x", "chdir": "/y"})
    options = dict(arg[0][2:].split("=", 1) for arg in sbatch_directives(render_job_script(job)))
    assert options["job-name"] == "name" and options["output"] == "/r/stdout.log" and options["chdir"] == "/r"


def test_render_without_env_file_and_activate():
    script = render_job_script(JobScript("n", "/r", ["echo", "hi there"]))
    assert "\n. " not in script
    assert "echo 'hi there'\nrc=$?\n" in script
    assert script.endswith('exit "$rc"\n')


bash = shutil.which("bash")


@pytest.mark.skipif(bash is None, reason="needs bash")
def test_snapshot_is_valid_bash():
    proc = subprocess.run(check=False, args=[bash, "-n"], input=render_job_script(snapshot_job()), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(bash is None, reason="needs bash")
def test_rendered_script_runs_and_writes_exit_code(tmp_path):
    run = tmp_path / "run dir"
    run.mkdir()
    (run / "env.sh").write_text("export GREETING='it works'\n")
    (run / "activate.sh").write_text("export ACTIVATED=1\n")
    job = JobScript("j", str(run), ["bash", "-c", 'echo "$GREETING $ACTIVATED"; exit 4'],
                    env_file=str(run / "env.sh"), activate=str(run / "activate.sh"))
    proc = subprocess.run(check=False, args=[bash, "-c", render_job_script(job)], text=True, capture_output=True, cwd=run)
    assert proc.returncode == 4
    assert proc.stdout == "it works 1\n"
    assert (run / "exit_code").read_text() == "4\n"
    assert not (run / "exit_code.tmp").exists()


@pytest.mark.skipif(bash is None, reason="needs bash")
def test_failing_activate_exits_97(tmp_path):
    job = JobScript("j", str(tmp_path), ["true"], activate=str(tmp_path / "missing.sh"))
    proc = subprocess.run(check=False, args=[bash, "-c", render_job_script(job)], text=True, capture_output=True, cwd=tmp_path)
    assert proc.returncode == 97
    assert "dagster-slurm: sourcing" in proc.stderr


@pytest.mark.skipif(bash is None, reason="needs bash")
def test_activate_path_with_single_quote_is_valid_bash(tmp_path):
    """BUG: the activate path is pasted unquoted into the single-quoted ``echo '...'`` error message,
    so a path containing ``'`` breaks the script (bash: unexpected EOF while looking for matching ``'``)."""
    run = tmp_path / "o'brien"
    run.mkdir()
    (run / "activate.sh").write_text("export ACTIVATED=1\n")
    job = JobScript("j", str(run), ["bash", "-c", 'echo "$ACTIVATED"'], activate=str(run / "activate.sh"))
    script = render_job_script(job)
    syntax = subprocess.run(check=False, args=[bash, "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    proc = subprocess.run(check=False, args=[bash, "-c", script], text=True, capture_output=True, cwd=run)
    assert (proc.returncode, proc.stdout) == (0, "1\n")


def test_newline_in_directive_value_cannot_escape_the_sbatch_header():
    """shlex.quote keeps a newline inside the quotes, so ``#SBATCH --comment='a<newline>b'`` would end the
    #SBATCH header early. Both the merge and the renderer refuse such values."""
    with pytest.raises(ConfigurationError, match="line break"):
        queue_directives({"extra_sbatch_options": {"comment": "first line\ntouch /tmp/injected"}})
    with pytest.raises(ConfigurationError, match="line break"):
        render_job_script(JobScript("j", "/r", ["true"], directives={"comment": "a\ntouch /tmp/x"}))
    with pytest.raises(ConfigurationError, match="line break"):
        render_job_script(JobScript("j\nx", "/r", ["true"]))


@pytest.mark.parametrize("parts,name", [
    (("dagster", "my asset", "run'1"), "dagster-my_asset-run_1"),
    (("a", "", "b"), "a-b"),
    ((), "dagster"),
    (("x" * 150,), "x" * 100),
])
def test_job_name(parts, name):
    assert job_name(*parts) == name


# --- queue_directives ----------------------------------------------------------------------------

def test_queue_defaults_become_directives():
    directives = queue_directives(SlurmQueueConfig(partition="batch", mem="4G").model_dump())
    assert directives == {"partition": "batch", "time": "01:00:00", "cpus-per-task": "1", "mem": "4G",
                          "nodes": "1"}


def test_overrides_win():
    queue = {"partition": "debug", "time_limit": "01:00:00", "cpus": 1, "mem": "1G", "gpus_per_node": 0}
    directives = queue_directives(queue, {"partition": "batch", "cpus": 4, "mem": "8G", "gpus_per_node": 2})
    assert directives == {"partition": "batch", "time": "01:00:00", "cpus-per-task": "4", "mem": "8G",
                          "gpus-per-node": "2"}


@pytest.mark.parametrize("alias,option", [("time", "time"), ("gpus", "gpus-per-node"), ("nodes", "nodes")])
def test_override_aliases_win(alias, option):
    queue = {"time_limit": "01:00:00", "gpus_per_node": 1, "num_nodes": 1}
    value = {"time": "00:10:00", "gpus": 3, "nodes": 2}[alias]
    assert queue_directives(queue, {alias: value})[option] == str(value)


def test_extra_sbatch_options_merge_and_normalise():
    queue = {"extra_sbatch_options": {"constraint": "cpu", "--exclusive": ""}}
    directives = queue_directives(queue, {"extra_sbatch_options": {"constraint": "gpu", "mail_type": "END"}})
    assert directives == {"constraint": "gpu", "exclusive": "", "mail-type": "END"}


def test_none_values_are_left_out():
    assert queue_directives({"partition": None, "mem": None, "qos": None, "cpus": 2}) == {"cpus-per-task": "2"}


def test_unknown_override_key_names_the_valid_keys():
    with pytest.raises(ConfigurationError) as info:
        queue_directives({"cpus": 1}, {"memory": "4G"}, setting="slurm_resources")
    message = str(info.value)
    assert message.startswith("slurm_resources: unknown key 'memory'.")
    for key in [*REQUIREMENT_KEYS, "extra_sbatch_options"]:
        assert key in message


def test_unknown_extra_sbatch_option_lists_valid_options():
    with pytest.raises(ConfigurationError) as info:
        queue_directives({"extra_sbatch_options": {"constrant": "gpu"}})
    message = str(info.value)
    assert "extra_sbatch_options" in message
    assert "unknown sbatch option 'constrant'" in message
    assert "Valid options are: " in message
    for option in ("constraint", "exclusive", "mail-type", "gres"):
        assert option in message
    assert message.count(", ") == len(KNOWN_SBATCH_OPTIONS) - 1  # no cluster asked: this version's list


@pytest.mark.parametrize("option", ["output", "error", "chdir", "job-name", "parsable", "wrap", "array", "wait"])
def test_options_owned_by_dagster_slurm_are_refused_with_the_reason(option):
    with pytest.raises(ConfigurationError, match=f"sbatch option '{option}' cannot be set: ") as info:
        queue_directives({}, {"extra_sbatch_options": {option: "x"}}, cluster_options=lambda: frozenset([option]))
    assert len(str(info.value)) > 60


def _cluster_help() -> str:
    return "".join(line for line in (DATA / "sbatch_help.txt").read_text().splitlines(keepends=True)
                   if not line.startswith("# "))


def test_options_of_a_newer_sbatch_are_accepted_when_the_cluster_lists_them():
    from dagster_slurm.config.queue import sbatch_options_from_help

    # the recorded 22.05 help, plus a line of a newer Slurm's help (23.02 added --prefer)
    text = _cluster_help() + "      --prefer=list           features desired but not required by job\n"
    asked = []

    def cluster_options():
        asked.append(1)
        return sbatch_options_from_help(text)

    assert queue_directives({}, {"extra_sbatch_options": {"prefer": "a100"}}, cluster_options=cluster_options) \
        == {"prefer": "a100"}
    assert queue_directives({}, {"extra_sbatch_options": {"constraint": "gpu"}},
                            cluster_options=lambda: pytest.fail("known options need no probe")) == {"constraint": "gpu"}
    with pytest.raises(ConfigurationError, match="not in the cluster's `sbatch --help`"):
        queue_directives({}, {"extra_sbatch_options": {"prefer": "x"}},
                         cluster_options=lambda: sbatch_options_from_help(_cluster_help()))
    assert asked == [1]


def test_recorded_sbatch_help_lists_the_known_options():
    from dagster_slurm.config.queue import sbatch_options_from_help

    options = sbatch_options_from_help(_cluster_help())
    assert {"constraint", "gres", "time", "array", "wrap"} <= options and len(options) > 80


def test_mem_and_mem_per_cpu_is_an_error():
    with pytest.raises(ConfigurationError, match="either mem or mem_per_cpu"):
        queue_directives({"mem": "4G", "mem_per_cpu": "1G"})
    with pytest.raises(ConfigurationError, match="either mem or mem_per_cpu"):
        queue_directives({}, {"mem": "4G", "mem_per_cpu": "1G"})


def test_memory_override_replaces_the_other_memory_kind():
    assert queue_directives({"mem": "4G"}, {"mem_per_cpu": "1G"}) == {"mem-per-cpu": "1G"}
    assert queue_directives({"mem_per_cpu": "1G"}, {"mem": "4G"}) == {"mem": "4G"}


@pytest.mark.parametrize("limit", ["30", "01:00:00", "1-12:30", "UNLIMITED", "notatime"])
def test_time_limits_pass_through_for_sbatch_to_judge(limit):
    # sbatch is the authority on time syntax and partition limits; its own message is passed
    # through (tests/integration/test_bad_input.py checks that on the real cluster)
    assert queue_directives({"time_limit": limit})["time"] == limit


def test_the_signal_before_the_time_limit_reaches_the_payload_and_its_status_is_kept(tmp_path):
    """Slurm signals the batch shell (--signal=B:USR1@60); the job script passes it on, notes it, and exits with
    the payload's own status. Run by bash here, signalled as slurmstepd would."""
    import signal as signals
    import time

    from dagster_slurm.slurm.script import SIGNALLED_FILE

    payload = tmp_path / "p.py"
    payload.write_text("import os, signal, sys, time\n"
                       "signal.signal(signal.SIGUSR1, lambda *a: (open('got', 'w').write(os.environ['DAGSTER_SLURM_TIMEOUT_SIGNAL']), sys.exit(7)))\n"
                       "open('started', 'w').close()\ntime.sleep(30)\n")
    directives = queue_directives({}, {"signal_before_timeout": "USR1@60"})
    assert directives["signal"] == "B:USR1@60"
    script = render_job_script(JobScript("j", str(tmp_path), [sys.executable, str(payload)], directives=directives))
    assert "#SBATCH --signal=B:USR1@60" in script
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path)
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signals.SIGUSR1)
    assert proc.wait(timeout=20) == 7
    assert (tmp_path / "got").read_text() == "USR1" and (tmp_path / SIGNALLED_FILE).exists()
    assert (tmp_path / "exit_code").read_text().strip() == "7"


@pytest.mark.parametrize("value", ["TERM", "TERM@", "@60", "TERM@1m"])
def test_signal_before_timeout_needs_signal_at_seconds(value):
    with pytest.raises(ConfigurationError, match="not SIGNAL@SECONDS"):
        queue_directives({}, {"signal_before_timeout": value})
