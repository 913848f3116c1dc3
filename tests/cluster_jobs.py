"""Count a test's jobs on the real cluster by job name: sacct, with squeue's fresher word on top."""


def jobs_named(transport, name: str) -> list[tuple[str, str]]:
    """(job id, state) of every job named ``name`` in the last two hours, oldest first."""
    out = transport.run(f"sacct -X -n -P -S now-2hours --name {name} -o JobID,State", retry=True).stdout
    jobs = dict(line.split("|")[:2] for line in out.split() if "|" in line)
    queued = transport.run(f"squeue -h -t all -n {name} -o '%i|%T'", retry=True).stdout  # sacct may lag
    jobs.update(line.split("|")[:2] for line in queued.split() if "|" in line)
    return sorted(jobs.items(), key=lambda item: int(item[0]))
