"""Count a test's jobs on the real cluster by job name: sacct, with squeue's fresher word on top."""

import re


def jobs_named(transport, name: str) -> list[tuple[str, str]]:
    """(job id, state) of every job of the last two hours named ``name`` plus the library's per-attempt
    suffix (``name-1a2b3c``), oldest first."""
    def ours(job_name: str) -> bool:
        return job_name.rsplit("-", 1)[0] == name

    out = transport.run("sacct -X -n -P -S now-2hours -o JobID,JobName,State", retry=True).stdout
    jobs = {row[0]: row[2] for row in (line.split("|") for line in out.splitlines()) if len(row) == 3 and ours(row[1])}
    queued = transport.run("squeue -h -t all -o '%i|%j|%T'", retry=True).stdout  # sacct may lag behind
    jobs.update({row[0]: row[2] for row in (line.split("|") for line in queued.splitlines())
                 if len(row) == 3 and ours(row[1])})
    return sorted(jobs.items(), key=lambda item: [int(n) for n in re.findall(r"\d+", item[0])[:2]])
