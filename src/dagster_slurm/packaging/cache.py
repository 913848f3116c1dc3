"""The remote environment cache: look up by key; on a miss pack once, upload, verify, publish atomically.

Layout under the deployment base (see ``RemoteLayout``)::

    envs/<key>            -> symlink to envs/.store/<key>-<nonce>   (published: the only name jobs use)
    envs/.store/<key>-<n>/   activate.sh, env/, .dagster-slurm-env.json, .leases/<job id>
    envs/.locks/<key>/       remote build lock (mtime refreshed by its holder)

A build unpacks into a fresh store folder and is published by renaming a symlink over
``envs/<key>``, so a build killed half-way is never used, and the unpacked prefix never moves
(conda prefixes and venvs hold absolute paths).
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagster_slurm.errors import DagsterSlurmError, RemoteCommandError, RemoteFileError
from dagster_slurm.packaging.locks import CACHE_HOME, RemoteLock, local_lock
from dagster_slurm.packaging.packer import Log, Packer, RemoteLayout
from dagster_slurm.transport.base import Transport

MARKER = ".dagster-slurm-env.json"


@dataclass
class EnvResult:
    path: str  # what jobs source activate.sh from
    key: str
    cache_hit: bool
    figures: dict[str, float] = field(default_factory=dict)


def is_published(transport: Transport, env_path: str) -> bool:
    return transport.stat_size(f"{env_path}/{MARKER}") is not None


def ensure_environment(
    transport: Transport,
    layout: RemoteLayout,
    packer: Packer,
    key: str,
    *,
    force: bool = False,
    keep_build: bool = False,
    lock_timeout: float = 1800.0,
    stale_after: float = 60.0,
    log: Log = print,
    target: str | None = None,
    metadata: dict | None = None,
) -> EnvResult:
    """Make the environment for ``key`` exist on the cluster and return where it is.

    ``target`` publishes at another path (``dagster-slurm deploy``'s versioned folder) instead of
    ``envs/<key>``. ``force`` rebuilds even if published (``force_env_push``)."""
    path = target or layout.env(key)
    if not force and is_published(transport, path):
        log(f"Environment cache hit: {path} (key {key}); nothing packed or uploaded.")
        return EnvResult(path, key, True)
    log(f"Environment cache miss for key {key}.")
    with local_lock(f"env-{key}", lock_timeout,
                    on_wait=lambda: log("Another process on this machine is building this environment; waiting.")):
        if not force and is_published(transport, path):  # another local process finished it meanwhile
            log(f"Environment {path} was published by another run meanwhile; reusing it.")
            return EnvResult(path, key, True)
        transport.mkdir_p(layout.locks)
        lock = RemoteLock(transport, f"{layout.locks}/{key}", stale_after=stale_after)
        started_waiting = time.monotonic()
        if not lock.wait_for(lambda: not force and is_published(transport, path), lock_timeout, log):
            log(f"Environment {path} was published by another process; reusing it "
                f"(waited {time.monotonic() - started_waiting:.1f} s).")
            return EnvResult(path, key, True)
        try:
            if not force and is_published(transport, path):
                return EnvResult(path, key, True)
            figures = _build(transport, layout, packer, key, path, keep_build, log, metadata or {})
        finally:
            lock.release()
    return EnvResult(path, key, False, figures)


def _build(transport: Transport, layout: RemoteLayout, packer: Packer, key: str, path: str, keep_build: bool,
           log: Log, metadata: dict) -> dict[str, float]:
    build_root = CACHE_HOME / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=build_root))
    staging = f"{layout.store}/{key}-{secrets.token_hex(4)}"
    figures: dict[str, float] = {}
    try:
        log(f"Packing with {packer.name}.")
        started = time.monotonic()
        result = packer.pack(build_dir, log)
        figures["pack_seconds"] = round(time.monotonic() - started, 3)
        figures["artifact_bytes"] = result.size
        log(f"Packed {result.artifact.name} ({result.size / 1e6:.1f} MB) in {figures['pack_seconds']:.1f} s.")

        started = time.monotonic()
        transport.mkdir_p(f"{staging}/.artifact")
        figures.update(packer.upload(transport, result, layout, staging, log))
        figures["upload_seconds"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        marker = json.dumps({"key": key, "packer": packer.name, "created_at": time.time(), **metadata})
        script = "\n".join([
            "set -e",
            packer.install_script(result, layout, staging),
            f"test -f {shlex.quote(staging)}/activate.sh || "
            "{ echo 'dagster-slurm: the unpacked environment has no activate.sh' >&2; exit 42; }",
            f"mkdir -p {shlex.quote(staging)}/.leases",
            f"printf '%s\\n' {shlex.quote(marker)} > {shlex.quote(staging)}/{MARKER}",
            f"rm -rf {shlex.quote(staging)}/.artifact",
            # publish: rename a fresh symlink over the name jobs use (atomic)
            f"mkdir -p \"$(dirname {shlex.quote(path)})\"",
            f"ln -sfn {shlex.quote(staging)} {shlex.quote(path)}.tmp-link",
            f"mv -Tf {shlex.quote(path)}.tmp-link {shlex.quote(path)}",
        ])
        try:
            transport.run(script, timeout=3600)
        except RemoteCommandError as exc:
            raise DagsterSlurmError(
                f"Unpacking the environment on the cluster failed (exit {exc.exit_status}); nothing was "
                f"published.\n{exc.stderr_tail}"
            ) from None
        figures["unpack_seconds"] = round(time.monotonic() - started, 3)
        log(f"Published environment {path} -> {staging} (upload {figures['upload_seconds']:.1f} s, "
            f"unpack {figures['unpack_seconds']:.1f} s).")
        return figures
    except (RemoteFileError, DagsterSlurmError) as exc:
        transport.run(f"rm -rf -- {shlex.quote(staging)}", check=False)  # never leave half a build
        if isinstance(exc, RemoteFileError):
            raise DagsterSlurmError(
                f"Uploading the environment failed: {exc}. Check that SLURM_DEPLOYMENT_BASE_PATH "
                f"({layout.base}) is writable and has free space and inodes (quota)."
            ) from None
        raise
    finally:
        if keep_build:
            log(f"debug_mode: build artefacts kept in {build_dir}")
        else:
            shutil.rmtree(build_dir, ignore_errors=True)
