"""``ComputeResource``: run a payload locally or as a Slurm job, with one call."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from dagster import PipesClientCompletedInvocation
from pydantic import Field, model_validator

from dagster_slurm.agent import hold_transport, release_transport, watcher_for
from dagster_slurm.compute.context import AnyContext, asset_metadata, op_context
from dagster_slurm.compute.environment import PackSettings, resolve_environment
from dagster_slurm.compute.identity import fingerprint, step_call
from dagster_slurm.compute.launchers import BashLauncher, Launcher
from dagster_slurm.compute.local import run_local
from dagster_slurm.compute.local_array import run_local_tasks
from dagster_slurm.compute.options import RunOptions, resolve_run_options
from dagster_slurm.compute.run_steps import run_has_no_step_left
from dagster_slurm.config.allocation import SlurmAllocation
from dagster_slurm.config.env import check_env_names
from dagster_slurm.config.queue import sbatch_options_from_help
from dagster_slurm.config.run import SlurmRunConfig
from dagster_slurm.config.slurm import DEFAULT_REMOTE_BASE, SlurmResource
from dagster_slurm.config.strict import reject_unknown
from dagster_slurm.errors import ConfigurationError, DagsterSlurmError, RemoteFileError
from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.pipes.allocation import AllocationRequest
from dagster_slurm.pipes.array_client import SlurmArrayClient
from dagster_slurm.pipes.client import SlurmJobRequest, SlurmPipesClient
from dagster_slurm.pipes.tasks import ArrayInvocation, Kind, step_partition_keys
from dagster_slurm.slurm.allocation import allocation_key, holder_directives, step_options, step_seconds
from dagster_slurm.slurm.array import parse_max_array_size
from dagster_slurm.slurm.parse import config_value
from dagster_slurm.slurm.script import from_extra_slurm_opts, job_name, queue_directives
from dagster_slurm.transport.probes import probe

RESOURCES_METADATA_KEY = "slurm_resources"
ALLOCATION_METADATA_KEY = "slurm_allocation"
_bases_ready: set[tuple[int, str]] = set()


def ensure_base(transport, remote_base: str) -> str:
    """Absolute deployment base, created once per process; unwritable is a clear error."""
    base = transport.absolute(remote_base)
    if (id(transport), base) not in _bases_ready:
        try:
            transport.mkdir_p(f"{base}/runs")
        except RemoteFileError as exc:
            raise ConfigurationError(
                f"Cannot create {base}/runs on the cluster ({exc}). Set SlurmResource.remote_base "
                f"(SLURM_DEPLOYMENT_BASE_PATH) to a folder you can write, with free space and inodes."
            ) from None
        _bases_ready.add((id(transport), base))
    return base


# names the library writes in a run folder (single jobs and array tasks)
RESERVED = re.compile(r"^(job\.sh|env\.sh|context(\.\d+)?\.json|messages(\.\d+)?\.jsonl|std(out|err)(\.\d+)?\.log"
                      r"|exit_code(\.tmp)?(\.\d+)?|\.?sbatch.*|closed)$")


def extra_file_uploads(paths: Sequence[str | os.PathLike]) -> tuple[list[tuple[str, str]], bytes]:
    """(local path, name in the run folder) for each extra file, and what identifies their content. A
    relative path keeps its relative name; an absolute one its file name."""
    uploads: list[tuple[str, str]] = []
    digest = b""
    for raw in paths:
        path = os.fspath(raw)
        if not os.path.isfile(path):
            raise ConfigurationError(f"extra_files: {path!r} is not a file (looked at {os.path.abspath(path)}). "
                                     "Pass existing files; relative paths resolve against the working directory.")
        name = os.path.basename(path) if os.path.isabs(path) else os.path.normpath(path)
        if name.startswith("..") or RESERVED.match(name.split("/")[0]):
            raise ConfigurationError(f"extra_files: {path!r} would land at {name!r} in the run folder, which is "
                                     "outside it or a name the library uses; pass it by an absolute path or rename it.")
        if any(name == n for _l, n in uploads):
            raise ConfigurationError(f"extra_files: two files would both be uploaded as {name!r}.")
        with open(path, "rb") as fh:
            digest += name.encode() + b"\0" + hashlib.sha256(fh.read()).digest()
        uploads.append((os.path.abspath(path), name))
    return uploads, digest


class ComputeResource(dg.ConfigurableResource):
    """Run a payload script with Dagster Pipes, on this machine or as a Slurm batch job.

    Example::

        @dg.asset
        def my_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(context=context, payload_path="script.py").get_results()

        defs = dg.Definitions(assets=[my_asset], resources={
            "compute": ComputeResource(mode="slurm", slurm=SlurmResource.from_env(),
                                       pre_deployed_env_path="/opt/envs/ml-v1"),
        })
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)


    mode: Literal["local", "slurm"] = Field(
        default="local", description="'local': a subprocess here. 'slurm': a batch job on the cluster."
    )
    slurm: SlurmResource | None = Field(default=None, description="The cluster; required in slurm mode.")
    default_launcher: BashLauncher = Field(
        default_factory=BashLauncher, description="How payloads are started when run() gets no launcher."
    )
    debug_mode: bool = Field(
        default=False, description="Keep local build artefacts and the remote run folder for inspection."
    )
    pre_deployed_env_path: str | None = Field(
        default=None,
        description="Environment folder on the cluster holding activate.sh and env/ (pixi-unpack layout). "
        "When set, no environment is packed.",
    )
    default_skip_payload_upload: bool = Field(
        default=False,
        description="Do not upload payloads; use {pre_deployed_env_path}/scripts/{filename} on the cluster.",
    )
    cache_inject_globs: list[str] | None = Field(
        default=None,
        description="Glob patterns (recursive **) of --inject files that count for the cache key. "
        "Default: every injected file counts.",
    )
    pixi_unpack_path: str | None = Field(
        default=None, description="pixi-unpack on the cluster, for a pack command without --create-executable "
        "(a .tar). Unset: the one on PATH, else ~/.pixi/bin/pixi-unpack.",
    )
    pixi_unpack_source: str | None = Field(
        default=None, description="A local pixi-unpack binary (or URL) for the default pack command's "
        "--create-executable (--pixi-unpack-source); unset, pixi-pack downloads it from GitHub while packing.",
    )
    auto_detect_platform: bool = Field(
        default=False, description="Ask the edge node (uname -m) for the target platform, once per connection agent (or process)."
    )
    pack_platform: str | None = Field(
        default=None, description="Explicit target platform, e.g. 'linux-64'. Wins over auto-detection."
    )
    lockfile: str | None = Field(
        default=None,
        description="pixi.lock or uv.lock to pack. Default: the nearest one from the working directory upwards.",
    )
    packer: Literal["auto", "pixi", "uv"] = Field(
        default="auto", description="'auto': pixi-pack for a pixi.lock, uv for a uv.lock."
    )
    pack_cmd: list[str] | None = Field(
        default=None,
        description="pixi-pack command; placeholders {platform}, {output}, {project}. Default: "
        "pixi-pack --environment default --platform {platform} --create-executable --output-file {output} "
        "{project}. Per-asset slurm_pack_cmd metadata replaces it.",
    )
    remote_python: str = Field(
        default="python3", description="Interpreter on the cluster that uv builds the venv from (uv packer)."
    )
    default_extra_files: list[str] | None = Field(
        default=None,
        description="Files uploaded beside every payload into its run folder (the job's working directory); "
        "a relative path keeps its relative name there, an absolute one its file name.",
    )
    array_partitions: bool = Field(
        default=True,
        description="A step over a range of partitions (BackfillPolicy.single_run / multi_run) runs as one "
        "Slurm job array, one task per partition, each with its own partition key. False: one job for the "
        "whole range (the payload reads pipes.partition_key_range).",
    )
    max_concurrent_tasks: int | None = Field(
        default=None, ge=1,
        description="Most array tasks running at once (sbatch --array=...%K); in local mode, most "
        "subprocesses at once (default there: the number of CPUs).",
    )
    python_version: str | None = Field(
        default=None,
        description="Python version the uv packer resolves for, e.g. '3.11'. Default: that of remote_python.",
    )
    allocation: SlurmAllocation | None = Field(
        default=None,
        description="Run each payload as a job step of one shared allocation (queue wait paid once). An asset "
        "opts out with slurm_allocation=False metadata, or in with a dict of SlurmAllocation fields; "
        "run(allocation=...) wins over both.",
    )

    def run(
        self,
        context: AnyContext,
        payload_path: str | os.PathLike,
        *,
        extra_env: Mapping[str, str] | None = None,
        extras: Mapping[str, Any] | None = None,
        launcher: Launcher | None = None,
        resource_requirements: Mapping[str, Any] | None = None,
        config: SlurmRunConfig | None = None,
        force_env_push: bool | None = None,
        skip_payload_upload: bool | None = None,
        remote_payload_path: str | None = None,
        max_concurrent_tasks: int | None = None,
        extra_slurm_opts: Mapping[str, Any] | None = None,
        extra_files: Sequence[str | os.PathLike] | None = None,
        allocation: SlurmAllocation | bool | None = None,
    ) -> PipesClientCompletedInvocation | ArrayInvocation:
        """Run ``payload_path`` and stream its Pipes messages into ``context``.

        A step over a range of partitions (a single-run backfill) runs one task per partition: a Slurm
        job array (local mode: subprocesses), each task's ``pipes.partition_key`` its own partition;
        each partition is recorded with its own task's metadata.

        Args:
            context: The asset's, op's or asset check's execution context. In an asset check, return
                ``compute.run(...).get_asset_check_result()``: the payload's ``report_asset_check``.
            payload_path: Local payload script. Relative paths resolve against the working directory.
            extra_env: Environment variables for the payload (kept out of argv, logs and job scripts).
            extras: Values the payload reads with ``pipes.get_extra(name)``.
            launcher: Overrides ``default_launcher``.
            resource_requirements: Per-call Slurm overrides (partition, cpus, mem, time_limit, gpus_per_node,
                num_nodes, qos, account, reservation, extra_sbatch_options). They win over the
                ``slurm_resources`` asset-metadata key, which wins over ``SlurmResource.queue``.
            config: A ``SlurmRunConfig`` from the launchpad.
            force_env_push, skip_payload_upload, remote_payload_path: explicit overrides (highest precedence).
            max_concurrent_tasks: for a partition range, overrides ``max_concurrent_tasks``.
            extra_slurm_opts: the other dagster-slurm's spelling of per-call Slurm options (``nodes``,
                ``cpus_per_task``, ``mem``, ``time``, ``gres``, ``qos``, ...); ``resource_requirements`` wins.
            extra_files: files uploaded beside the payload (a config, a helper module); adds to
                ``default_extra_files``. Relative paths keep their relative names in the job's working directory.
            allocation: run as a step of this ``SlurmAllocation``; ``False``: as a job of its own; ``None``
                (default): the ``slurm_allocation`` asset metadata, else ``ComputeResource.allocation``.

        Returns:
            ``PipesClientCompletedInvocation`` (``ArrayInvocation`` for a partition range); call ``.get_results()``.
        """
        context = op_context(context)
        keys = step_partition_keys(context) if self.array_partitions else None
        try:
            return self._execute(context, payload_path, extra_env=extra_env, extras=extras, launcher=launcher,
                                 resource_requirements=resource_requirements, config=config,
                                 force_env_push=force_env_push, skip_payload_upload=skip_payload_upload,
                                 remote_payload_path=remote_payload_path, kind="partitions" if keys else None,
                                 tasks=keys, max_concurrent_tasks=max_concurrent_tasks,
                                 extra_slurm_opts=extra_slurm_opts, extra_files=extra_files, allocation=allocation)
        except DagsterSlurmError as err:  # its text says it all: the step failure shows no frames of ours
            raise err.with_traceback(None) from None

    def map(
        self,
        context: AnyContext,
        payload_path: str | os.PathLike,
        items: Sequence[Any],
        *,
        extra_env: Mapping[str, str] | None = None,
        extras: Mapping[str, Any] | None = None,
        launcher: Launcher | None = None,
        resource_requirements: Mapping[str, Any] | None = None,
        config: SlurmRunConfig | None = None,
        force_env_push: bool | None = None,
        skip_payload_upload: bool | None = None,
        remote_payload_path: str | None = None,
        max_concurrent_tasks: int | None = None,
        extra_slurm_opts: Mapping[str, Any] | None = None,
        extra_files: Sequence[str | os.PathLike] | None = None,
    ) -> ArrayInvocation:
        """Fan out: run ``payload_path`` once per item, as one Slurm job array (local mode: subprocesses).

        Each task reads its item with ``pipes.get_extra("item")`` (and ``"item_index"``); items must be
        JSON values. ``get_results()`` gives one materialization with the per-item outcomes; the
        step fails naming the items whose task failed. ``.outcomes`` holds each item's state, job id
        and reported results. Other arguments as for :meth:`run`.
        """
        items = list(items)
        if not items:
            raise ConfigurationError("compute.map(items=...) got no items; pass at least one.")
        try:
            json.dumps(items)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"compute.map(items=...): items must be JSON values (they reach each task "
                                     f"as pipes.get_extra('item')): {exc}") from None
        try:
            return self._execute(op_context(context), payload_path, extra_env=extra_env, extras=extras,
                                 launcher=launcher, resource_requirements=resource_requirements, config=config,
                                 force_env_push=force_env_push, skip_payload_upload=skip_payload_upload,
                                 remote_payload_path=remote_payload_path, kind="items", tasks=items,
                                 max_concurrent_tasks=max_concurrent_tasks, extra_slurm_opts=extra_slurm_opts,
                                 extra_files=extra_files)
        except DagsterSlurmError as err:  # as in run()
            raise err.with_traceback(None) from None

    def _execute(self, context, payload_path, *, extra_env, extras, launcher, resource_requirements, config,
                 force_env_push, skip_payload_upload, remote_payload_path, kind: Kind | None,
                 tasks: Sequence[Any] | None, max_concurrent_tasks: int | None,
                 extra_slurm_opts: Mapping[str, Any] | None = None,
                 extra_files: Sequence[str | os.PathLike] | None = None,
                 allocation: SlurmAllocation | bool | None = None):
        throttle = max_concurrent_tasks or self.max_concurrent_tasks
        if extra_slurm_opts:
            alias = from_extra_slurm_opts(extra_slurm_opts)
            ours = dict(resource_requirements or {})
            extra = {**dict(alias.get("extra_sbatch_options") or {}),  # type: ignore[call-overload]
                     **dict(ours.get("extra_sbatch_options") or {})}
            resource_requirements = {**alias, **ours, **({"extra_sbatch_options": extra} if extra else {})}
        launcher = launcher or self.default_launcher
        metadata = asset_metadata(context)
        options = resolve_run_options(
            {"force_env_push": force_env_push, "skip_payload_upload": skip_payload_upload,
             "remote_payload_path": remote_payload_path},
            config,
            metadata,
            {"skip_payload_upload": self.default_skip_payload_upload},
        )
        payload = os.fspath(payload_path)
        extra_env = check_env_names(extra_env or {})
        if self.mode == "local":
            extra_file_uploads([*(self.default_extra_files or []), *(extra_files or [])])  # the same checks
            local = self._local_payload(payload)
            if kind is not None and tasks is not None:
                return run_local_tasks(context, launcher.command(local, local=True), extra_env, extras, kind,
                                       tasks, throttle)
            return run_local(context, launcher.command(local, local=True), extra_env, extras)

        slurm = self._slurm()
        # local mode runs the same assets unchanged: allocation settings count in slurm mode only
        shared = self._allocation(allocation, metadata) if kind is None else None
        transport = hold_transport(slurm.ssh.settings(), self)
        watcher = watcher_for(transport, slurm.poll_interval_min, slurm.poll_interval_max)
        base = ensure_base(transport, slurm.remote_base or DEFAULT_REMOTE_BASE)
        call = step_call(context)
        folder = f"{base}/runs/{call.root_run_id}/{call.readable}-{call.identity[:32]}"

        env = resolve_environment(
            self._pack_settings(), self.pre_deployed_env_path, metadata, transport, RemoteLayout(base),
            force=options.force_env_push, log=context.log.info,
        )
        env_path = env.path
        if not env.packed:
            self._check_env(transport, env_path)

        remote_payload, uploads, payload_bytes = self._place_payload(transport, payload, options, env_path)
        extra_uploads, extra_digest = extra_file_uploads([*(self.default_extra_files or []), *(extra_files or [])])
        uploads = [*uploads, *extra_uploads]
        payload_bytes += extra_digest
        directives = {**launcher.sbatch_directives(), **queue_directives(
            slurm.queue.model_dump(),
            {**(metadata.get(RESOURCES_METADATA_KEY) or {}), **(resource_requirements or {})},
            cluster_options=lambda: sbatch_options_from_help(probe(transport, "sbatch --help", check=False)),
        )}
        command = launcher.command(remote_payload, local=False)
        alloc_request = None
        if shared is not None:
            alloc_request, directives = self._allocation_request(
                shared, slurm, base, call.root_run_id, directives,
                {**(metadata.get(RESOURCES_METADATA_KEY) or {}), **(resource_requirements or {})}, context)
        request = SlurmJobRequest(
            folder=folder,
            run_id=context.run_id,
            fingerprint=fingerprint(payload=payload_bytes, command=command, directives=directives,
                                    env_path=env_path, extra_env=extra_env,
                                    extras={**(extras or {}), "__tasks__": [kind, tasks]} if kind else extras),
            job_name=job_name("dagster", call.readable),
            command=command,
            directives=directives,
            activate=f"{env_path}/activate.sh",
            env={**launcher.job_env(), **extra_env,
                 **({"DAGSTER_SLURM_CHECKPOINT_DIR": f"{folder}/checkpoint"} if slurm.requeue_on else {})},
            requeue_on=tuple(slurm.requeue_on),
            max_requeues=slurm.max_requeues,
            uploads=uploads,
            keep_run_dir=self.debug_mode,
            metadata={"slurm_environment": dg.MetadataValue.path(env_path), **env.metadata},
            lease_dir=f"{env_path}/.leases" if env.packed else None,
            sbatch_timeout=slurm.ssh.command_timeout,
            job_url=lambda job_id: slurm.job_url(job_id, config_value(
                probe(transport, "scontrol show config", check=False), "ClusterName") or ""),
            allocation=alloc_request,
        )
        if kind is not None and tasks is not None:
            return SlurmArrayClient(transport, watcher, job_timeout=slurm.job_timeout,
                                    queue_timeout=slurm.queue_timeout).run(
                context, request, kind=kind, keys_or_items=tasks, extras=extras, max_concurrent=throttle,
                max_array_size=self._max_array_size(transport, slurm))
        client = SlurmPipesClient(transport, watcher, job_timeout=slurm.job_timeout,
                                  queue_timeout=slurm.queue_timeout, output_poll_max=slurm.output_poll_interval_max)
        return client.run(context=context, request=request, extras=extras)

    # -- helpers
    def _allocation(self, given: SlurmAllocation | bool | None, metadata: Mapping[str, Any]) -> SlurmAllocation | None:
        """The allocation this call runs in: run(allocation=...), else slurm_allocation metadata, else the resource's."""
        choice: Any = given if given is not None else metadata.get(ALLOCATION_METADATA_KEY, None)
        where = "run(allocation=...)" if given is not None else f"the {ALLOCATION_METADATA_KEY!r} asset metadata"
        if choice is None or choice is True:
            if choice is True and self.allocation is None:
                raise ConfigurationError(f"{where} asks for the shared allocation, but ComputeResource.allocation "
                                         "is not set. Set it, or give a SlurmAllocation (or a dict of its fields).")
            return self.allocation
        if choice is False:
            return None
        if isinstance(choice, SlurmAllocation):
            return choice
        if isinstance(choice, Mapping):
            return SlurmAllocation(**dict(choice))
        raise ConfigurationError(f"{where} is {choice!r}: give True, False, a SlurmAllocation or a dict of its "
                                 "fields (num_nodes, cpus, mem, time_limit, scope, name, ...).")

    def _allocation_request(self, shared: SlurmAllocation, slurm: SlurmResource, base: str,
                            root_run_id: str, directives: Mapping[str, str], overrides: Mapping[str, Any],
                            context) -> tuple[AllocationRequest, dict[str, str]]:
        """The allocation's request, and the step's own directives (what its accounting is read against)."""
        settings = shared.model_dump()
        own_time = queue_directives({}, {k: v for k, v in overrides.items() if k in ("time_limit", "time")}).get("time")
        step = {**directives, **({"time": own_time} if own_time else {})}
        if not own_time:
            step.pop("time", None)  # the queue's default limit is for jobs: a step runs within the allocation's
        holder = holder_directives(settings, slurm.queue.model_dump())
        key = allocation_key(shared.scope, shared.name, root_run_id, holder)
        run_over = (lambda: run_has_no_step_left(context)) if shared.scope == "run" else (lambda: False)
        return AllocationRequest(key_dir=f"{base}/allocations/{key}", key=key, directives=holder, settings=settings,
                                 step_options=step_options(step, settings), need_seconds=step_seconds(step),
                                 idle_timeout=shared.idle_timeout, run_over=run_over), step

    def _place_payload(self, transport, payload: str, options: RunOptions,
                       env_path: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Where the job finds the payload (uploaded: a name in its run folder, the job's working
        directory), what to upload for that, and what identifies the payload's content."""
        if not options.skip_payload_upload:
            local = self._local_payload(payload)
            with open(local, "rb") as fh:
                content = fh.read()
            return os.path.basename(local), [(local, os.path.basename(local))], content
        remote = transport.absolute(
            options.remote_payload_path or posixpath.join(env_path, "scripts", os.path.basename(payload))
        )
        attrs = transport.stat_size(remote), transport.stat_mtime(remote)
        if attrs[0] is None:
            raise ConfigurationError(
                f"skip_payload_upload is set ({options.sources['skip_payload_upload']}) but there is no "
                f"payload at {remote} on the cluster. Deploy it there (dagster-slurm deploy uploads "
                "scripts/), set remote_payload_path, or unset skip_payload_upload."
            )
        return remote, [], f"{remote}|{attrs[0]}|{attrs[1]}".encode()

    @staticmethod
    def _max_array_size(transport, slurm: SlurmResource) -> int:
        """The site's MaxArraySize (asked once per connection agent or process), or the smaller setting."""
        site = parse_max_array_size(probe(transport, "scontrol show config", check=False))
        return min(site, slurm.max_array_size) if slurm.max_array_size else site

    def _pack_settings(self) -> PackSettings:
        return PackSettings(
            lockfile=self.lockfile, packer=self.packer, pack_cmd=self.pack_cmd, pack_platform=self.pack_platform,
            auto_detect_platform=self.auto_detect_platform, cache_inject_globs=self.cache_inject_globs,
            remote_python=self.remote_python, python_version=self.python_version, debug_mode=self.debug_mode,
            pixi_unpack_path=self.pixi_unpack_path, pixi_unpack_source=self.pixi_unpack_source,
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Dagster tears the resource down (end of the step process or the in-process run): the SSH
        connection is closed once no other resource of this process holds it (atexit closes the rest)."""
        if self.mode == "slurm" and self.slurm is not None:
            release_transport(self.slurm.ssh.settings(), self)

    def _slurm(self) -> SlurmResource:
        if self.slurm is None:
            raise ConfigurationError(
                "ComputeResource(mode='slurm') needs slurm=SlurmResource(...) (e.g. SlurmResource.from_env())."
            )
        return self.slurm

    @staticmethod
    def _local_payload(payload: str) -> str:
        path = os.path.abspath(payload)
        if not os.path.isfile(path):
            raise ConfigurationError(
                f"payload_path {payload!r} does not exist (looked at {path}). Pass an existing script, "
                "e.g. str(Path(__file__).parent / 'script.py')."
            )
        return path

    @staticmethod
    def _check_env(transport, env_path: str) -> None:
        if transport.stat_size(f"{env_path}/activate.sh") is None:
            exists = transport.stat_size(env_path) is not None
            raise ConfigurationError(
                f"pre_deployed_env_path {env_path!r} "
                + ("has no activate.sh" if exists else "does not exist on the cluster")
                + ". Point ComputeResource.pre_deployed_env_path (or slurm_pre_deployed_env_path metadata) "
                "at a folder made by pixi-unpack or `dagster-slurm deploy` (activate.sh + env/)."
            )
