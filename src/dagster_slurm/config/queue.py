"""Slurm queue (resource request) settings and their validation."""

from __future__ import annotations

import re
from collections.abc import Callable

import dagster as dg
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown
from dagster_slurm.errors import ConfigurationError

# Long sbatch options a user may pass through ``extra_sbatch_options`` (Slurm 22.05+); options of newer
# versions are accepted when the cluster's ``sbatch --help`` lists them. OWNED_SBATCH_OPTIONS are refused.
KNOWN_SBATCH_OPTIONS = frozenset(
    ["account", "acctg-freq", "batch", "bb", "bbf", "begin", "cluster-constraint", "clusters", "comment", "constraint", "container", "contiguous", "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution", "exclude", "exclusive", "export", "export-file", "extra-node-info", "get-user-env", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "hold", "ignore-pbs", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "no-requeue", "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "open-mode", "overcommit", "oversubscribe", "partition", "power", "priority", "profile", "propagate", "qos", "reboot", "requeue", "reservation", "signal", "sockets-per-node", "spread-job", "switches", "thread-spec", "threads-per-core", "time", "time-min", "tmp", "uid", "use-min-nodes", "wait-all-nodes", "wckey"]
)

# Options dagster-slurm sets or whose semantics it owns: a user value would break it.
OWNED_SBATCH_OPTIONS = {
    "array": "one Slurm job per step call is the library's model (an array would run the payload N times)",
    "het-group": "heterogeneous jobs are not supported",
    "output": "the library writes stdout.log into the run folder and streams it to Dagster",
    "error": "the library writes stderr.log into the run folder and streams it to Dagster",
    "chdir": "the job runs in its run folder",
    "parsable": "the library reads the job id with --parsable itself",
    "wait": "the library watches the job itself; --wait would block sbatch",
    "wrap": "the library writes the job script",
    "job-name": "the library names jobs so it can find them again",
    "help": "not a job option", "usage": "not a job option", "version": "not a job option",
}


def sbatch_options_from_help(text: str) -> frozenset[str]:
    """Long options listed by the cluster's ``sbatch --help``."""
    return frozenset(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", text))


def validate_sbatch_options(options: dict[str, str], setting: str,
                            cluster_options: Callable[[], frozenset[str]] | None = None) -> dict[str, str]:
    """Return ``options`` with keys normalised (no leading dashes). Options the library owns are refused
    with the reason; others must be known to sbatch: this version's list, or (asked only when needed,
    once per transport) the cluster's own ``sbatch --help``."""
    out: dict[str, str] = {}
    for raw_key, value in options.items():
        key = raw_key.lstrip("-").replace("_", "-")
        if key in OWNED_SBATCH_OPTIONS:
            raise ConfigurationError(
                f"{setting}: sbatch option {raw_key!r} cannot be set: {OWNED_SBATCH_OPTIONS[key]}."
            )
        if key not in KNOWN_SBATCH_OPTIONS and (cluster_options is None or key not in cluster_options()):
            valid = KNOWN_SBATCH_OPTIONS | (cluster_options() if cluster_options else frozenset())
            where = " (not in the cluster's `sbatch --help` either)" if cluster_options else ""
            raise ConfigurationError(
                f"{setting}: unknown sbatch option {raw_key!r}{where}. "
                "Valid options are: " + ", ".join(sorted(valid - OWNED_SBATCH_OPTIONS.keys()))
            )
        out[key] = str(value)
    return out


class SlurmQueueConfig(dg.Config):
    """What each job asks Slurm for. Per-asset overrides come through ``resource_requirements``
    or the ``slurm_resources`` asset-metadata key (see ``ComputeResource``)."""

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        if isinstance(data, dict) and "cpus_per_task" in data:  # sbatch's name for ``cpus``
            data = dict(data)
            alias = data.pop("cpus_per_task")
            if "cpus" in data and data["cpus"] != alias:
                raise ConfigurationError(f"SlurmQueueConfig: cpus={data['cpus']!r} and cpus_per_task={alias!r} "
                                         "are the same setting; give one of them.")
            data["cpus"] = alias
        return reject_unknown(cls, data)

    partition: str | None = Field(default=None, description="Partition (queue). Default: the cluster's.")
    time_limit: str = Field(default="01:00:00", description="Wall-clock limit, e.g. '00:30:00'.")
    cpus: int = Field(default=1, description="CPUs per task (--cpus-per-task; ``cpus_per_task`` is accepted too).")
    ntasks_per_node: int | None = Field(default=None, description="Tasks (ranks) per node (--ntasks-per-node); "
                                        "None: Slurm's default, or what the launcher asks for.")
    mem: str | None = Field(default=None, description="Memory per node, e.g. '4G' (--mem).")
    mem_per_cpu: str | None = Field(default=None, description="Memory per CPU (--mem-per-cpu); not with mem.")
    gpus_per_node: int = Field(default=0, description="GPUs per node (--gpus-per-node); 0 for none.")
    gpu_type: str | None = Field(default=None, description="GPU type, e.g. 'a100' (--gpus-per-node=a100:N).")
    num_nodes: int = Field(default=1, description="Number of nodes (--nodes).")
    signal_before_timeout: str | None = Field(
        default=None, description="Signal the payload this long before the time limit, e.g. 'TERM@120' "
        "(sbatch --signal=B:TERM@120; the job script passes it on to the payload). Slurm may send it up to "
        "a minute early.")
    qos: str | None = Field(default=None, description="Quality of service (--qos).")
    account: str | None = Field(default=None, description="Account to charge (--account).")
    reservation: str | None = Field(default=None, description="Reservation (--reservation).")
    extra_sbatch_options: dict[str, str] = Field(
        default_factory=dict,
        description="Further sbatch long options without dashes, e.g. {'constraint': 'gpu'}. "
        "Checked against a known list and the cluster's `sbatch --help`; unknown options, and those the "
        "library owns (array, output, error, chdir, job-name, parsable, wait, wrap), are an error.",
    )
