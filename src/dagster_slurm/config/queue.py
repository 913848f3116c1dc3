"""Slurm queue (resource request) settings and their validation."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from dagster_slurm.errors import ConfigurationError

# Long sbatch options a user may pass through ``extra_sbatch_options`` (Slurm 22.05+).
# Options that dagster-slurm sets itself (output, error, chdir, parsable, wrap, job-name) are absent.
KNOWN_SBATCH_OPTIONS = frozenset(
    ["account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "cluster-constraint", "clusters", "comment", "constraint", "container", "contiguous", "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution", "exclude", "exclusive", "export", "export-file", "extra-node-info", "get-user-env", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "hold", "ignore-pbs", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "no-requeue", "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "open-mode", "overcommit", "oversubscribe", "partition", "power", "priority", "profile", "propagate", "qos", "reboot", "requeue", "reservation", "signal", "sockets-per-node", "spread-job", "switches", "thread-spec", "threads-per-core", "time", "time-min", "tmp", "uid", "use-min-nodes", "wait-all-nodes", "wckey"]
)

def validate_sbatch_options(options: dict[str, str], setting: str) -> dict[str, str]:
    """Return ``options`` with keys normalised (no leading dashes); reject unknown ones."""
    out: dict[str, str] = {}
    for raw_key, value in options.items():
        key = raw_key.lstrip("-").replace("_", "-")
        if key not in KNOWN_SBATCH_OPTIONS:
            raise ConfigurationError(
                f"{setting}: unknown sbatch option {raw_key!r}. Valid options are: "
                + ", ".join(sorted(KNOWN_SBATCH_OPTIONS))
            )
        out[key] = str(value)
    return out


class SlurmQueueConfig(dg.Config):
    """What each job asks Slurm for. Per-asset overrides come through ``resource_requirements``
    or the ``slurm_resources`` asset-metadata key (see ``ComputeResource``)."""

    partition: str | None = Field(default=None, description="Partition (queue). Default: the cluster's.")
    time_limit: str = Field(default="01:00:00", description="Wall-clock limit, e.g. '00:30:00'.")
    cpus: int = Field(default=1, description="CPUs per task (--cpus-per-task).")
    mem: str | None = Field(default=None, description="Memory per node, e.g. '4G' (--mem).")
    mem_per_cpu: str | None = Field(default=None, description="Memory per CPU (--mem-per-cpu); not with mem.")
    gpus_per_node: int = Field(default=0, description="GPUs per node (--gpus-per-node); 0 for none.")
    num_nodes: int = Field(default=1, description="Number of nodes (--nodes).")
    qos: str | None = Field(default=None, description="Quality of service (--qos).")
    account: str | None = Field(default=None, description="Account to charge (--account).")
    reservation: str | None = Field(default=None, description="Reservation (--reservation).")
    extra_sbatch_options: dict[str, str] = Field(
        default_factory=dict,
        description="Further sbatch long options without dashes, e.g. {'constraint': 'gpu'}. "
        "Checked against a known list; unknown options are an error.",
    )
