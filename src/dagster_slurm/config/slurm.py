"""The Slurm resource: where jobs run and how they are watched."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import Field, field_validator, model_validator

from dagster_slurm.config.queue import SlurmQueueConfig
from dagster_slurm.config.ssh import SSHConnectionResource, _either
from dagster_slurm.config.strict import reject_unknown
from dagster_slurm.errors import ConfigurationError

BASE_PATH_ENV = "SLURM_DEPLOYMENT_BASE_PATH"
QUEUE_ENV = {"partition": "SLURM_PARTITION", "cpus": "SLURM_CPUS", "mem": "SLURM_MEM", "time_limit": "SLURM_TIME"}
DEFAULT_REMOTE_BASE = "dagster-slurm"  # relative: resolved against the remote home directory


REQUEUE_STATES = frozenset({"TIMEOUT", "PREEMPTED", "NODE_FAIL"})


class SlurmResource(dg.ConfigurableResource):
    """A Slurm cluster reached over SSH.

    Example::

        slurm = SlurmResource(
            ssh=SSHConnectionResource.from_env(),
            queue=SlurmQueueConfig(partition="batch", time_limit="00:30:00", cpus=4, mem="8G"),
            remote_base="/scratch/alice/dagster-slurm",
        )
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)


    ssh: SSHConnectionResource = Field(description="How to reach the edge node.")
    queue: SlurmQueueConfig = Field(
        default_factory=SlurmQueueConfig, description="Default resource request of every job."
    )
    remote_base: str | None = Field(
        default=None,
        description=f"Root folder on the cluster for runs and environments ({BASE_PATH_ENV}). "
        "Default: ~/dagster-slurm, expanded on the remote side.",
    )
    poll_interval_min: float = Field(
        default=0.1, description="Seconds between job-state polls right after submit or activity."
    )
    poll_interval_max: float = Field(
        default=10.0, description="Upper bound, in seconds, that polling backs off to while nothing changes."
    )
    output_poll_interval_max: float = Field(
        default=0.5,
        description="Upper bound, in seconds, between reads of a running job's Pipes messages, stdout and "
        "stderr (over SFTP, no Slurm load). It also bounds how late the job's end is noticed.",
    )
    job_timeout: float | None = Field(
        default=None,
        description="Optional bound, in seconds, on waiting for a job (queue time included). "
        "Default: wait until Slurm ends the job (its time limit bounds it). When it expires the job is "
        "left running and a re-execution reattaches to it.",
    )
    queue_timeout: float | None = Field(
        default=None,
        description="Optional bound, in seconds, on how long a job may stay PENDING; then it is cancelled "
        "and the step fails. Jobs pending for reasons that can never resolve (e.g. PartitionConfig) fail "
        "at once regardless.",
    )
    job_url_template: str | None = Field(
        default=None,
        description="A link to each job in your site's web UI (Open OnDemand, Grafana, ...), with {job_id}, "
        "{cluster} and {user}, e.g. 'https://ood.example.org/pun/sys/dashboard/activejobs?jobid={job_id}'. "
        "Shown as URL metadata (slurm_job_url).",
    )
    max_array_size: int | None = Field(
        default=None, ge=1,
        description="Most tasks per job array (partition ranges and compute.map run as arrays). Default: "
        "the cluster's MaxArraySize (scontrol show config); a smaller value here wins. Larger task counts "
        "are split into several arrays.",
    )

    requeue_on: list[str] = Field(
        default_factory=list,
        description="Job end states after which the step's job is submitted again (same step, same checkpoint "
        "folder, DAGSTER_SLURM_CHECKPOINT_DIR): any of TIMEOUT, PREEMPTED, NODE_FAIL. A job that exits after "
        "SlurmQueueConfig.signal_before_timeout's signal counts as TIMEOUT. Default: none.",
    )
    max_requeues: int = Field(default=3, ge=0, description="Most resubmissions of one step's job (requeue_on).")

    @field_validator("requeue_on")
    @classmethod
    def _check_requeue_on(cls, value: list[str]) -> list[str]:
        states = [str(v).upper() for v in value]
        wrong = [s for s in states if s not in REQUEUE_STATES]
        if wrong:
            raise ConfigurationError(f"SlurmResource.requeue_on: {', '.join(wrong)} cannot be requeued; use any of "
                                     f"{', '.join(sorted(REQUEUE_STATES))}.")
        return states

    @field_validator("job_url_template")
    @classmethod
    def _check_url_template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(job_id="1", cluster="c", user="u")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigurationError(f"SlurmResource.job_url_template {value!r}: {exc!r}; the placeholders are "
                                         "{job_id}, {cluster} and {user}.") from None
        return value

    def job_url(self, job_id: str, cluster: str) -> str | None:
        """The job's link, or None without a template."""
        if not self.job_url_template:
            return None
        return self.job_url_template.format(job_id=job_id, cluster=cluster, user=self.ssh.user or "")

    @classmethod
    def from_env(cls, **overrides) -> SlurmResource:
        """SSH from ``SLURM_EDGE_NODE_*``, ``remote_base`` from ``SLURM_DEPLOYMENT_BASE_PATH`` (or
        ``SLURM_REMOTE_BASE``), the queue defaults from ``SLURM_PARTITION``, ``SLURM_CPUS``, ``SLURM_MEM``,
        ``SLURM_TIME`` when set."""
        kwargs: dict = {"ssh": SSHConnectionResource.from_env()}
        base = _either(BASE_PATH_ENV, "SLURM_REMOTE_BASE")
        if base:
            kwargs["remote_base"] = base
        queue: dict[str, Any] = {field: os.environ[var] for field, var in QUEUE_ENV.items() if os.environ.get(var)}
        if queue:
            try:
                kwargs["queue"] = SlurmQueueConfig(**queue)
            except ValueError as exc:
                raise ConfigurationError(f"SLURM_PARTITION / SLURM_CPUS / SLURM_MEM / SLURM_TIME: {exc}") from None
        kwargs.update(overrides)
        return cls(**kwargs)
