"""Shared allocations: the holder job, the step request, the step's watching and accounting; against
recorded outputs of each release (tests/data/slurm/record_steps.sh) where Slurm answers."""

from __future__ import annotations

import subprocess

import pytest

from dagster_slurm.config.allocation import SlurmAllocation
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.pipes.waiting import cancel_command
from dagster_slurm.slurm import allocation as alloc
from dagster_slurm.slurm.ledger import parse_state, state_command
from dagster_slurm.slurm.parse import JOB_ID, parse_sacct
from dagster_slurm.slurm.watcher import JobHandle, JobWatcher
from tests.recorded_transport import RecordedTransport
from tests.unit.test_release_outputs import RELEASES, ids_of, out

SETTINGS = SlurmAllocation(num_nodes=1, cpus=4, mem="8G", time_limit="02:00:00").model_dump()


def bash_parses(text: str) -> None:
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_the_holder_script_asks_for_the_allocation_and_ends_itself_when_idle():
    directives = alloc.holder_directives(SETTINGS, {"partition": "batch", "account": "proj"})
    assert directives == {"nodes": "1", "ntasks-per-node": "1", "cpus-per-task": "4", "time": "02:00:00",
                          "mem": "8G", "partition": "batch", "account": "proj"}
    text = alloc.render_holder(folder="/b/allocations/k/0", job_name="dagster-alloc-k", directives=directives,
                               idle_timeout=90.5)
    assert text == alloc.render_holder(folder="/b/allocations/k/0", job_name="dagster-alloc-k",
                                       directives=directives, idle_timeout=90.5)  # pure
    bash_parses(text)
    assert "#SBATCH --cpus-per-task=4" in text and "#SBATCH --output=/b/allocations/k/0/holder.log" in text
    assert "idle=91 " in text and "$((s + 7200))" in text  # idle timeout rounded up; the limit in seconds
    assert "srun --exact" in text and 'mv "inbox/$name" "taken/$name"' in text
    with pytest.raises(ConfigurationError, match="line break"):
        alloc.render_holder(folder="/f", job_name="j", directives={"partition": "a\nb"}, idle_timeout=1)


def test_a_step_gets_its_own_cpus_mem_and_time_and_a_fair_share_of_memory():
    assert alloc.step_options({"cpus-per-task": "2", "mem": "1G", "time": "00:10:00"}, SETTINGS) == [
        "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--mem=1G", "--time=00:10:00"]
    # no mem of its own: its share by cpus (8G * 1/4), else srun would give it all and steps could not run side by side
    assert "--mem=2048M" in alloc.step_options({"cpus-per-task": "1"}, SETTINGS)
    assert alloc.step_seconds({"time": "1-00:00:00"}) == 86400 and alloc.step_seconds({}) == 0


def test_a_multi_rank_step_holds_its_ranks_cpus_and_its_srun_calls_overlap_it_on_its_nodes():
    wide = SlurmAllocation(num_nodes=3, cpus=4, mem="8G", time_limit="01:00:00").model_dump()
    options = alloc.step_options({"nodes": "2", "ntasks-per-node": "2", "cpus-per-task": "2"}, wide)
    assert options == ["--nodes=2", "--ntasks=4", "--ntasks-per-node=2", "--cpus-per-task=2", "--mem=8192M"]
    env = alloc.step_environment(options)
    bash_parses(env)
    assert 'SLURM_JOB_NODELIST="$SLURM_STEP_NODELIST"' in env and "SLURM_OVERLAP=1" in env
    assert "export SLURM_MEM_PER_NODE=8192" in env and "unset SLURM_MEM_PER_NODE SLURM_MEM_PER_CPU" in env
    assert "SLURM_MEM_PER_CPU=512" in alloc.step_environment(["--nodes=1", "--mem-per-cpu=512M"])
    with pytest.raises(ConfigurationError, match=r"1 node\(s\) x 3 task\(s\) x 2 CPU\(s\)"):
        alloc.step_options({"ntasks-per-node": "3", "cpus-per-task": "2"}, wide)  # 6 CPUs on a node of 4
    # the holder runs job.sh on rank 0 only; the other tasks wait for it (a step of many tasks)
    holder = alloc.render_holder(folder="/f", job_name="j", directives={"time": "1:00:00"}, idle_timeout=5)
    assert "--kill-on-bad-exit=1" in holder and 'until [ -e step_done ]' in holder and ". ./step.env" in holder


@pytest.mark.parametrize("directives, words", [
    ({"cpus-per-task": "8"}, "more than its allocation has"),
    ({"nodes": "2"}, "more than its allocation has"),
    ({"mem": "16G"}, "SlurmAllocation.mem=8G"),
    ({"time": "03:00:00"}, "more than its whole allocation has"),
])
def test_a_step_that_can_never_fit_is_refused_naming_both_settings(directives, words):
    with pytest.raises(ConfigurationError, match=words):
        alloc.step_options(directives, SETTINGS)


def test_allocation_settings_are_checked():
    # (pydantic wraps the ConfigurationError of a validator; its text is what the user reads)
    with pytest.raises(Exception, match="needs name"):
        SlurmAllocation(scope="named")
    with pytest.raises(Exception, match="letters, digits"):
        SlurmAllocation(scope="named", name="a b")
    with pytest.raises(Exception, match="plain value"):
        SlurmAllocation(mem="8G'; rm -rf ~")
    with pytest.raises(Exception, match="bogus"):
        SlurmAllocation(bogus=1)


def test_the_allocation_key_is_its_name_or_one_per_run_and_settings():
    assert alloc.allocation_key("named", "nightly", "r1", {"cpus": 1}) == "nightly"
    a, b = (alloc.allocation_key("run", None, "r1", {"cpus": c}) for c in (1, 2))
    assert a.startswith("run-r1-") and a != b and a == alloc.allocation_key("run", None, "r1", {"cpus": 1})


def test_the_drop_script_requests_once_and_refuses_what_does_not_fit():
    text = alloc.drop_script(run_dir="/r/0", alloc_folder="/a/0", alloc_job_id="12", name="dagster-x-1a2b3c",
                             need_seconds=600, ledger="/r/ledger.jsonl", record_line='{"n":0,"job_id":"12"}\n')
    bash_parses(text)
    assert "mkdir drop 2>/dev/null || exit 75" in text and "ln -s /r/0 /a/0/inbox/dagster-x-1a2b3c" in text
    assert f"exit {alloc.DROP_REFUSED}" in text and f"exit {alloc.ALLOCATION_ENDED}" in text
    assert alloc.parse_drop(f"{alloc.DROPPED}12\n") == ("12", None)
    assert alloc.parse_drop(f"{alloc.LEFT}42\n") == (None, 42)


def test_the_generation_and_step_probes_read_what_the_commands_print():
    bash_parses(alloc.acquire_read_command("/b/allocations/k", "u"))
    bash_parses(alloc.submit_holder_command("/b/allocations/k/0"))
    assert alloc.parse_generation("gen:-\n") == alloc.Generation(None)
    assert alloc.parse_generation("gen:3\njob:77\nended\nage:12\n") == alloc.Generation(3, "77", "", True, 12.0)
    assert alloc.parse_generation("gen:0\njob:77\nstate:RUNNING\nage:5\n").state == "RUNNING"
    assert alloc.parse_generation("gen:0\njob:\nfailed:sbatch: error: Invalid partition\nage:1\n").failed.startswith("sbatch")
    assert alloc.parse_step_probe("77.3\nstarted\ntaken\n") == alloc.StepProbe("77.3", "", False, True, False, True)
    assert alloc.parse_step_probe("launch_failed:1\nended\n").launch_failed == "1"
    listed = alloc.parse_list("nightly/0|77|1000|1100 running=0 served=4 idle_since=1040||4|1100\n")
    assert listed == [alloc.Listed("nightly/0", "77", 100.0, 0, 4, 60.0, "")]


def test_step_ids_are_job_ids_and_cancelled_as_steps():
    assert JOB_ID.match("123.4") and alloc.is_step("123.4") and not alloc.is_step("123") \
        and not alloc.is_step("123.batch")
    assert alloc.allocation_of("123.4") == "123" and alloc.allocation_of("123_4") == "123_4"
    assert "squeue -h -s 123.4 -o %i" in cancel_command("123.4") and "scancel 123.4" in cancel_command("123.4")


STEP_RELEASES = [r for r in RELEASES if (out.__globals__["ROOT"] / r / "sacct_steps_ended.txt").exists()]


@pytest.mark.parametrize("release", STEP_RELEASES)
def test_a_steps_own_sacct_line_is_its_accounting(release):
    job = ids_of(release, "squeue_alloc_steps")[0]
    ended = parse_sacct(out(release, "sacct_steps_ended"), steps={f"{job}.0", f"{job}.1"})
    long, short = ended[f"{job}.0"], ended[f"{job}.1"]
    assert (long.state, short.state) == ("COMPLETED", "COMPLETED")
    assert long.elapsed_seconds >= 7 and short.elapsed_seconds <= 3 and long.ncpus == 1
    assert long.max_rss_bytes and long.max_rss_bytes < 64 * 2**20
    running = parse_sacct(out(release, "sacct_step_running"), steps={f"{job}.0"})[f"{job}.0"]
    assert running.state == "RUNNING" and not running.terminal
    assert parse_state(out(release, "state_step"), f"{job}.1") == "COMPLETED"
    assert state_command(f"{job}.1").startswith("echo rc=0; echo @@;")  # sacct alone: squeue -j knows no steps


class _Steps(RecordedTransport):
    """squeue of the allocation job answered RUNNING, squeue --steps by the recording."""

    def __init__(self, release, job, steps_out, sacct):
        super().__init__({"squeue --help": out("22.05", "squeue_help"), "sacct": sacct})
        self.job, self.steps_out = job, steps_out

    def run(self, command, **kw):
        if command.startswith("squeue -h -s"):
            self.answers["squeue"] = self.steps_out
        elif command.startswith("squeue"):
            self.answers["squeue"] = f"{self.job}|RUNNING|None|N/A\n"
        return super().run(command, **kw)


@pytest.mark.parametrize("release", STEP_RELEASES)
def test_the_watcher_follows_a_step_by_its_allocation_and_squeue_steps(release):
    job = ids_of(release, "squeue_alloc_steps")[0]
    transport = _Steps(release, job, out(release, "squeue_alloc_steps"), out(release, "sacct_steps_ended"))
    watcher = JobWatcher(transport)
    running, ended = JobHandle(f"{job}.0"), JobHandle(f"{job}.1")
    watcher.tick([running, ended])
    assert [c for c in transport.commands if c.startswith("squeue")] == [
        f"squeue -h -t all -o '%i|%T|%r|%S' -j {job}", f"squeue -h -s -j {job} -o '%i'"]  # one job asked, once
    assert running.state == "RUNNING" and not running.done.is_set()
    assert ended.done.is_set() and ended.final.state == "COMPLETED" and ended.final.job_id == f"{job}.1"
    assert "sacct -P -n -o" in transport.commands[-1] and transport.commands[-1].endswith(f"-j {job}.1")
    running.mark_exited(0)  # its exit file appeared: finished at once, whatever squeue still lists
    watcher.tick([running])
    assert running.done.is_set() and running.final.state == "COMPLETED"
