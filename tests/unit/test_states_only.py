"""The watcher's states-only polling (squeue --only-job-state) against recorded 24.11/26.05 outputs."""
import pytest

from dagster_slurm.slurm.parse import SQUEUE_FORMAT, TERMINAL_STATES, parse_squeue
from dagster_slurm.slurm.watcher import STATES_ONLY, JobHandle, JobWatcher
from tests.recorded_transport import RecordedTransport
from tests.unit.test_release_outputs import RELEASES, ids_of, out, rec


@pytest.mark.parametrize("release", RELEASES)
def test_squeue_only_job_state_where_the_release_has_it(release):
    has = STATES_ONLY in out(release, "squeue_help")
    assert has == (release >= "24.05")
    if not has:
        return
    full, cheap = parse_squeue(out(release, "squeue_running")), parse_squeue(out(release, "squeue_states_running"))
    assert {i: e.state for i, e in cheap.items()} == {i: e.state for i, e in full.items()}
    array = parse_squeue(out(release, "squeue_states_array"))
    assert {e.state for e in array.values()} == {"RUNNING", "PENDING"}
    unknown = rec(release, "squeue_states_unknown")  # exit 0 and only the known job, where squeue -o fails
    assert unknown["exit_status"] == 0 and [e.state for e in parse_squeue(unknown["stdout"]).values()] == ["RUNNING"]
    terminal = parse_squeue(out(release, "squeue_states_terminal"))
    assert terminal and all(e.state in TERMINAL_STATES for e in terminal.values())


class _Squeues(RecordedTransport):
    """squeue answered by its query: --only-job-state, or the full format."""

    def __init__(self, release, cheap, full, sacct=""):
        super().__init__({"squeue --help": out(release, "squeue_help"), "sacct": sacct})
        self.cheap, self.full = cheap, full

    def run(self, command, **kw):
        if command.startswith("squeue -"):
            self.answers["squeue"] = self.cheap if STATES_ONLY in command else self.full
        return super().run(command, **kw)


@pytest.mark.parametrize("release", ["24.11", "26.05"])
def test_the_watcher_polls_states_only_and_asks_pending_jobs_their_reason(release):
    multi, blocker = ids_of(release, "squeue_pending_start")
    cheap = "".join(f"{i}|{e.state}\n" for i, e in parse_squeue(out(release, "squeue_states_pending")).items()
                    if i in (multi, blocker))
    transport = _Squeues(release, cheap, out(release, "squeue_pending_start"))
    watcher = JobWatcher(transport)
    handles = [JobHandle(multi), JobHandle(blocker)]  # ticked by hand: no polling thread
    assert watcher.tick(handles)
    squeues = [c for c in transport.commands if c.startswith("squeue")]
    assert squeues == [f"squeue {STATES_ONLY} -h -t all -o '%i|%T' -j {multi},{blocker}",
                       f"squeue -h -t all -o '{SQUEUE_FORMAT}' -j {multi}"]  # the pending job only
    assert handles[0].state == "PENDING" and handles[0].reason in ("Resources", "Priority") and handles[0].start
    assert handles[1].state == "RUNNING" and handles[1].reason == ""
    transport.commands.clear()
    assert not watcher.tick(handles)  # its reason known: states only, and what the full query said stands
    assert [c for c in transport.commands if c.startswith("squeue")] == [squeues[0]]
    assert handles[0].reason in ("Resources", "Priority") and handles[0].start


def test_the_watcher_keeps_the_full_query_where_squeue_lacks_states_only():
    transport = RecordedTransport({"squeue --help": out("22.05", "squeue_help"),
                                   "squeue": out("22.05", "squeue_running")})
    handles = [JobHandle(i) for i in ids_of("22.05", "squeue_running")]
    JobWatcher(transport).tick(handles)
    assert [c for c in transport.commands if c.startswith("squeue")] == [
        f"squeue -h -t all -o '{SQUEUE_FORMAT}' -j {','.join(ids_of('22.05', 'squeue_running'))}"]
    assert {h.state for h in handles} == {"RUNNING"}


def test_a_pending_jobs_reason_is_asked_again_after_1_s_then_less_often(monkeypatch):
    """A new job reads Priority until the scheduler looks at it, Resources a second later: the change shows."""
    import dagster_slurm.slurm.watcher as watcher_module

    clock = [1000.0]
    monkeypatch.setattr(watcher_module.time, "monotonic", lambda: clock[0])
    multi, blocker = ids_of("26.05", "squeue_pending_start")
    full = out("26.05", "squeue_pending_start")
    line = next(x for x in full.splitlines() if x.startswith(f"{multi}|"))
    reason = line.split("|")[2]
    transport = _Squeues("26.05", f"{multi}|PENDING\n", line.replace(f"|{reason}|", "|Priority|") + "\n")
    watcher, handle = JobWatcher(transport), JobHandle(multi)

    def full_asked(after: float) -> bool:
        clock[0] += after
        transport.commands.clear()
        watcher.tick([handle])
        return any(STATES_ONLY not in c for c in transport.commands if c.startswith("squeue -"))

    assert full_asked(0) and handle.reason == "Priority"
    transport.full = line.replace(f"|{reason}|", "|Resources|") + "\n"
    assert not full_asked(0.5) and handle.reason == "Priority"
    assert full_asked(0.6) and handle.reason == "Resources"  # 1 s on: the change is seen
    assert full_asked(1.1)  # changed, so asked again after 1 s; then unchanged: 2 s, 4 s, ...
    assert not full_asked(1.5) and full_asked(0.6)
    for _ in range(8):
        clock[0] += 29
        transport.commands.clear()
        watcher.tick([handle])
    assert not full_asked(0.5) and full_asked(watcher_module.PENDING_DETAIL_SECONDS)  # at most every 30 s
