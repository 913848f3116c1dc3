"""Render the sbatch job script. Pure: same input, same text; every value shell-quoted."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster_slurm.config.queue import validate_sbatch_options
from dagster_slurm.errors import ConfigurationError

# resource_requirements / slurm_resources keys -> sbatch long options
REQUIREMENT_KEYS = {
    "partition": "partition",
    "time_limit": "time",
    "time": "time",
    "cpus": "cpus-per-task",
    "cpus_per_task": "cpus-per-task",
    "ntasks_per_node": "ntasks-per-node",
    "mem": "mem",
    "mem_per_cpu": "mem-per-cpu",
    "gpus_per_node": "gpus-per-node",
    "gpus": "gpus-per-node",
    "gpu_type": "gpu-type",  # not an sbatch option: makes --gpus-per-node=<type>:<count>
    "num_nodes": "nodes",
    "nodes": "nodes",
    "qos": "qos",
    "account": "account",
    "reservation": "reservation",
    "signal_before_timeout": "signal-before-timeout",  # not an sbatch option: makes --signal=B:<SIG>@<seconds>
}


# the other dagster-slurm's run(extra_slurm_opts=...) keys -> ours; any other key is an sbatch long option
EXTRA_SLURM_OPTS_KEYS = {
    "nodes": "num_nodes", "cpus_per_task": "cpus", "cpus-per-task": "cpus", "mem": "mem", "mem_per_cpu": "mem_per_cpu",
    "mem-per-cpu": "mem_per_cpu", "time": "time_limit", "partition": "partition", "qos": "qos", "account": "account",
    "reservation": "reservation", "gpus_per_node": "gpus_per_node", "gpus-per-node": "gpus_per_node",
}


def from_extra_slurm_opts(opts: Mapping[str, object]) -> dict[str, object]:
    """``extra_slurm_opts`` as ``resource_requirements``: known keys renamed, the rest (``gres``,
    ``constraint``, ``exclusive``, ...) as ``extra_sbatch_options`` (checked like them: an unknown option
    is an error listing the valid ones)."""
    out: dict[str, object] = {}
    extra: dict[str, str] = {}
    for key, value in opts.items():
        name = str(key).lstrip("-")
        if name in EXTRA_SLURM_OPTS_KEYS:
            out[EXTRA_SLURM_OPTS_KEYS[name]] = value
        elif value is not None and value is not False:
            extra[name.replace("_", "-")] = "" if value is True else str(value)
    if extra:
        out["extra_sbatch_options"] = extra
    return out


_MEMORY = ("mem", "mem-per-cpu")
ATTEMPT_PREFIX = "# dagster-slurm attempt: "
ACTIVATION_FAILED = 97  # the job script's exit status when its env file or activate.sh cannot be sourced
SIGNALLED_FILE = "timeout_signal"  # written in the run folder when the job script passed the time-limit signal on


def forwarded_signal(directives: Mapping[str, str]) -> tuple[str, str] | None:
    """(signal, seconds) when the job asks for its batch shell to be signalled before the limit (B:SIG@SECS)."""
    m = re.fullmatch(r"B:(?:SIG)?([A-Z0-9]+)@(\d+)", str(directives.get("signal", "")))
    return (m.group(1), m.group(2)) if m else None


def attempt_from_script(text: str) -> dict[str, Any]:
    """The attempt record a rendered job script carries (empty if none)."""
    for line in text.splitlines():
        if line.startswith(ATTEMPT_PREFIX):
            try:
                return dict(json.loads(line[len(ATTEMPT_PREFIX):]))
            except ValueError:
                return {}
    return {}


def _layer(values: Mapping[str, object], setting: str, strict: bool,
           cluster_options: Callable[[], frozenset[str]] | None = None) -> dict[str, str]:
    """One layer of settings -> sbatch options. ``None`` means unset; 0 GPUs means none."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key == "extra_sbatch_options" or value is None or value == "":  # empty: unset (the cluster's default)
            continue
        if key not in REQUIREMENT_KEYS:
            if not strict:
                continue
            raise ConfigurationError(
                f"{setting}: unknown key {key!r}. Valid keys: {', '.join(sorted(REQUIREMENT_KEYS))}, "
                "extra_sbatch_options."
            )
        out[REQUIREMENT_KEYS[key]] = str(value)
    out.update(validate_sbatch_options(dict(values.get("extra_sbatch_options") or {}),  # type: ignore[call-overload]
                                       f"{setting}.extra_sbatch_options", cluster_options))
    if all(kind in out for kind in _MEMORY):
        raise ConfigurationError(f"{setting}: set either mem or mem_per_cpu, not both.")
    return out


def queue_directives(queue: Mapping[str, object], overrides: Mapping[str, object] | None = None,
                     setting: str = "resource_requirements",
                     cluster_options: Callable[[], frozenset[str]] | None = None) -> dict[str, str]:
    """Merge the queue defaults with per-asset overrides into sbatch long options.

    ``queue`` has ``SlurmQueueConfig`` field names; ``overrides`` may use the same names (or
    ``time``/``gpus``/``nodes``) plus ``extra_sbatch_options``. Unknown keys are an error. An
    override of one memory kind (mem / mem_per_cpu) replaces the other. Values go to sbatch as
    given: sbatch judges time syntax and partition limits, and its message is passed through.
    """
    directives = _layer(queue, "SlurmQueueConfig", strict=False, cluster_options=cluster_options)
    top = _layer(overrides or {}, setting, strict=True, cluster_options=cluster_options)
    if any(kind in top for kind in _MEMORY):
        for kind in _MEMORY:
            directives.pop(kind, None)
    directives.update(top)
    if directives.get("gpus-per-node") == "0":
        del directives["gpus-per-node"]
    before = directives.pop("signal-before-timeout", None)
    if before:
        m = re.fullmatch(r"(?:SIG)?([A-Z0-9]+)@(\d+)", before.strip().upper())
        if not m:
            raise ConfigurationError(f"{setting}: signal_before_timeout={before!r} is not SIGNAL@SECONDS, e.g. 'TERM@120'.")
        directives["signal"] = f"B:{m.group(1)}@{m.group(2)}"
    gpu_type = directives.pop("gpu-type", None)
    if gpu_type:
        if "gpus-per-node" not in directives:
            raise ConfigurationError(f"{setting}: gpu_type={gpu_type!r} needs gpus_per_node (how many of them per node).")
        directives["gpus-per-node"] = f"{gpu_type}:{directives['gpus-per-node'].rsplit(':', 1)[-1]}"
    for key, value in directives.items():
        if "\n" in value or "\r" in value:
            raise ConfigurationError(f"{setting}: the value of {key!r} contains a line break; remove it.")
    return directives


@dataclass(frozen=True)
class JobScript:
    """Everything the job script says."""

    job_name: str
    run_dir: str  # absolute
    command: Sequence[str]
    directives: Mapping[str, str] = field(default_factory=dict)
    env_file: str | None = None  # sourced first; holds secrets and the Pipes bootstrap (mode 0600)
    activate: str | None = None  # environment activation script, sourced before the payload
    attempt: Mapping[str, object] | None = None  # the ledger record of this attempt, kept as a comment
    array: str | None = None  # an --array spec: each task writes stdout.<id>.log, stderr.<id>.log, exit_code.<id>


def task_env_case(per_task: Mapping[int, Mapping[str, str]]) -> str:
    """Shell lines for an array job's env file: each task exports its own variables (its Pipes
    bootstrap), chosen by ``$SLURM_ARRAY_TASK_ID``."""
    q = shlex.quote
    lines = ['case "${SLURM_ARRAY_TASK_ID:-}" in']
    for index, env in sorted(per_task.items()):
        lines.append(f"{int(index)}) " + "; ".join(f"export {k}={q(str(v))}" for k, v in env.items()) + " ;;")
    lines.append("esac")
    return "\n".join(lines) + "\n"


def job_name(*parts: str) -> str:
    name = "-".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "dagster"


def render_job_script(job: JobScript) -> str:
    q = shlex.quote
    run = job.run_dir.rstrip("/")
    suffix = ".%a" if job.array else ""
    directives = {
        **job.directives,
        "job-name": job.job_name,
        "output": f"{run}/stdout{suffix}.log",
        "error": f"{run}/stderr{suffix}.log",
        "chdir": run,
    }
    if job.array:
        directives["array"] = job.array
    for key, value in directives.items():
        if "\n" in str(value) or "\r" in str(value):
            raise ConfigurationError(f"sbatch option {key!r} contains a line break; remove it.")
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{key}={q(str(value))}" if str(value) != "" else f"#SBATCH --{key}"  # a flag
              for key, value in sorted(directives.items())]
    lines.append("# generated by dagster-slurm")
    if job.attempt is not None:
        lines.append(ATTEMPT_PREFIX + json.dumps(dict(job.attempt), sort_keys=True))
    # The exit-code file is written whatever happens: also when the environment cannot be set up
    # (status 97) or the command cannot start (126/127 from the shell).
    sources = [f for f in (job.env_file, job.activate) if f]
    run_lines = [" ".join(q(arg) for arg in job.command), "rc=$?"]
    signal = forwarded_signal(directives)
    if signal:
        # Slurm signals the batch shell (B:): run the payload in the background so the trap runs at once, pass
        # the signal on, note it, and keep waiting for the payload's own exit status
        name, seconds = signal
        lines.append(f"export DAGSTER_SLURM_TIMEOUT_SIGNAL={name} DAGSTER_SLURM_TIMEOUT_SIGNAL_SECONDS={seconds}")
        lines.append(f"trap 'touch {q(run + '/' + SIGNALLED_FILE)}; kill -s {name} \"$child\" 2>/dev/null' {name}")
        run_lines = [run_lines[0] + ' & child=$!', 'wait "$child"; rc=$?',
                     'while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done']
    if sources:
        failed = q(f"dagster-slurm: sourcing {' or '.join(sources)} failed")
        lines.append(f"if {' && '.join('. ' + q(f) for f in sources)}; then")
        lines += ["  " + line for line in run_lines]
        lines.append(f"else echo {failed} >&2; rc={ACTIVATION_FAILED}; fi")
    else:
        lines += run_lines
    if job.array:
        exit_file = q(run + "/exit_code.") + '"$SLURM_ARRAY_TASK_ID"'
        temporary = q(run + "/exit_code.tmp.") + '"$SLURM_ARRAY_TASK_ID"'
    else:
        exit_file, temporary = q(run + "/exit_code"), q(run + "/exit_code.tmp")
    lines.append(f'printf "%s\\n" "$rc" > {temporary} && mv -f {temporary} {exit_file}')
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"
