"""Old run folders on the cluster (``runs/<root run id>/<step call>/``): what is there and what
``dagster-slurm runs gc`` may delete. Failed runs keep their folders for debugging; this prunes them.
Pure: one remote script gathers everything, parsing and planning are functions of its output."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from dagster_slurm.slurm.ledger import LEDGER
from dagster_slurm.slurm.parse import active_jobs_script, parse_active

# sed program printing the job id of each ledger line that has one (only well-formed ids: one bad id
# would make squeue fail for the whole list)
JOB_IDS = shlex.quote(r's/.*"job_id":"\([0-9][0-9]*\(_[0-9][0-9]*\)\{0,1\}\)".*/\1/p')


def scan_runs_script(runs: str) -> str:
    """Per step-call folder: its newest mtime and the job ids in its ledger; then which are active."""
    q = shlex.quote
    return "\n".join([
        f"for d in {q(runs)}/*/*/; do [ -d \"$d\" ] || continue; d=${{d%/}}; "
        "m=$(find \"$d\" -printf '%T@\\n' 2>/dev/null | sort -n | tail -n 1); "
        f"j=$(sed -n {JOB_IDS} \"$d/{LEDGER}\" 2>/dev/null | paste -sd, -); "
        "printf 'CALL|%s|%s|%s\\n' \"$d\" \"${m%.*}\" \"$j\"; done",
        active_jobs_script(
            f"$(cat {q(runs)}/*/*/{LEDGER} 2>/dev/null | sed -n {JOB_IDS} | sort -u | paste -sd, -)"),
        "true",
    ])


@dataclass
class StepCallFolder:
    path: str
    mtime: float
    job_ids: list[str] = field(default_factory=list)


@dataclass
class RunFolders:
    calls: list[StepCallFolder] = field(default_factory=list)
    active_jobs: set[str] = field(default_factory=set)
    squeue_error: str | None = None

    @classmethod
    def parse(cls, text: str) -> RunFolders:
        found = cls()
        for line in text.splitlines():
            kind, _, rest = line.partition("|")
            if kind == "CALL":
                path, mtime, ids = (rest.split("|") + ["", ""])[:3]
                found.calls.append(StepCallFolder(path, float(mtime or 0), [i for i in ids.split(",") if i]))
            elif kind == "ACTIVE":
                found.active_jobs, found.squeue_error = parse_active(rest)
        return found


def plan_runs_gc(found: RunFolders, *, older_than: float, now: float) -> list[StepCallFolder]:
    """Step-call folders untouched for ``older_than`` whose jobs are all over (none queued or running)."""
    return [c for c in found.calls
            if now - c.mtime > older_than and not any(j in found.active_jobs for j in c.job_ids)]


def delete_command(runs: str, doomed: list[StepCallFolder]) -> str:
    """Delete the folders, then every run folder left empty."""
    q = shlex.quote
    lines = [f"rm -rf -- {q(c.path)}" for c in doomed]
    lines.append(f"find {q(runs)} -mindepth 1 -maxdepth 1 -type d -empty -delete 2>/dev/null; true")
    return "\n".join(lines)
