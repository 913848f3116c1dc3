"""The executor for Slurm-heavy runs: Dagster's multiprocess executor with step processes forked from a
server that has imported Dagster and dagster-slurm once (``forkserver`` with ``preload_modules``)."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from dagster_slurm.errors import ConfigurationError

PRELOAD = ("dagster", "dagster_slurm", "dagster_pipes", "asyncssh")


def slurm_executor(max_concurrent: int = 8, preload_modules: Sequence[str] = (),
                   **config: object) -> dg.ExecutorDefinition:
    """Dagster's ``multiprocess_executor``, configured for runs of many Slurm steps.

    Each step process of the default multiprocess executor is a fresh interpreter (``spawn``) that imports
    Dagster and the definitions again (~3 s per step on a small host). Here step processes are forked from
    one ``forkserver`` that imported Dagster, dagster-slurm (and ``preload_modules``, e.g. your definitions'
    module) once, and up to ``max_concurrent`` steps run at a time: the steps mostly wait on Slurm, so more
    of them than CPUs is right. Further keyword arguments are merged into the executor's config
    (``retries``, ``tag_concurrency_limits``, ...). Use it as any executor: ``dg.Definitions(...,
    executor=slurm_executor())`` or ``define_asset_job(..., executor_def=slurm_executor(16))``.

    Forking saves the interpreter's start, not Dagster's own work per step process (definitions, resources,
    events): for many short assets Dagster's ``in_process_executor`` with a run-scoped
    ``ComputeResource(allocation=...)`` is faster (100 trivial assets on 2 CPUs: 151.6 s with this executor,
    54.6 s in process with an allocation, 44.7 s for 100 bare sbatch; ``bench/agent_scale.py``). This one is
    for fewer, longer steps that must run side by side.
    """
    if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or max_concurrent < 1:
        raise ConfigurationError(f"slurm_executor(max_concurrent={max_concurrent!r}): give a whole number >= 1 "
                                 "(how many steps run at a time).")
    if isinstance(preload_modules, str):
        raise ConfigurationError(f"slurm_executor(preload_modules={preload_modules!r}): give a list of module "
                                 "names, e.g. ['my_project.defs'].")
    modules = list(dict.fromkeys([*PRELOAD, *preload_modules]))
    return dg.multiprocess_executor.configured(
        {"max_concurrent": max_concurrent, "start_method": {"forkserver": {"preload_modules": modules}}, **config},
        name="slurm_executor")
