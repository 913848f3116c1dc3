"""Which environment a Slurm run uses: pre-deployed, or packed on demand and cached on the cluster.

Order: ``slurm_pre_deployed_env_path`` metadata > ``slurm_pack_cmd`` / ``slurm_packer`` metadata >
``ComputeResource.pre_deployed_env_path`` > packing the project's lock file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.cache import ensure_environment
from dagster_slurm.packaging.cache_key import compute_cache_key
from dagster_slurm.packaging.lockfile import find_lockfile
from dagster_slurm.packaging.packer import Packer, RemoteLayout
from dagster_slurm.packaging.pixi_pack import PixiPackPacker
from dagster_slurm.packaging.platform import remote_python_version, resolve_platform
from dagster_slurm.packaging.uv_packer import UvPacker

PRE_DEPLOYED_KEY = "slurm_pre_deployed_env_path"
PACK_CMD_KEY = "slurm_pack_cmd"
PACKER_KEY = "slurm_packer"


@dataclass
class PackSettings:
    """The ComputeResource fields that shape packing."""

    lockfile: str | None = None
    packer: str = "auto"
    pack_cmd: list[str] | None = None
    pack_platform: str | None = None
    auto_detect_platform: bool = False
    cache_inject_globs: list[str] | None = None
    remote_python: str = "python3"
    python_version: str | None = None
    debug_mode: bool = False
    lock_timeout: float = 1800.0
    pixi_unpack_path: str | None = None
    pixi_unpack_source: str | None = None


@dataclass
class ResolvedEnv:
    path: str
    packed: bool  # False for pre-deployed environments
    metadata: dict[str, Any] = field(default_factory=dict)


def make_packer(settings: PackSettings, metadata: Mapping[str, Any], transport) -> Packer:
    lock = find_lockfile(explicit=settings.lockfile)
    kind = metadata.get(PACKER_KEY) or ("pixi" if metadata.get(PACK_CMD_KEY) else settings.packer)
    if kind == "auto":
        kind = lock.kind
    platform = resolve_platform(transport, settings.pack_platform, settings.auto_detect_platform)
    if kind in ("pixi", "pixi-pack"):
        return PixiPackPacker(metadata.get(PACK_CMD_KEY) or settings.pack_cmd, lock.project_dir, platform,
                              settings.cache_inject_globs, pixi_unpack_path=settings.pixi_unpack_path,
                              pixi_unpack_source=settings.pixi_unpack_source)
    if kind == "uv":
        if lock.kind != "uv":
            raise ConfigurationError(f"The uv packer needs a uv.lock, but the lock file found is {lock.path}.")
        version = settings.python_version or remote_python_version(transport, settings.remote_python)
        return UvPacker(lock.path, platform, version, settings.remote_python)
    raise ConfigurationError(f"Unknown packer {kind!r} (ComputeResource.packer / {PACKER_KEY} metadata): "
                             "use 'auto', 'pixi' or 'uv'.")


def resolve_environment(
    settings: PackSettings,
    pre_deployed: str | None,
    metadata: Mapping[str, Any],
    transport,
    layout: RemoteLayout,
    *,
    force: bool,
    log: Callable[[str], None],
) -> ResolvedEnv:
    meta_path = metadata.get(PRE_DEPLOYED_KEY)
    if meta_path:
        return ResolvedEnv(transport.absolute(str(meta_path)), False)
    if pre_deployed and not (metadata.get(PACK_CMD_KEY) or metadata.get(PACKER_KEY)):
        return ResolvedEnv(transport.absolute(pre_deployed), False)
    packer = make_packer(settings, metadata, transport)
    lock = find_lockfile(explicit=settings.lockfile)
    key = compute_cache_key(lock.path.read_bytes(), packer.key_command(), packer.platform,
                            packer.key_files())
    result = ensure_environment(transport, layout, packer, key, force=force, keep_build=settings.debug_mode,
                                lock_timeout=settings.lock_timeout, log=log,
                                metadata={"lockfile": str(lock.path), "python": sys.version.split()[0]})
    meta: dict[str, Any] = {"slurm_env_key": key, "slurm_env_cache_hit": result.cache_hit,
                            "slurm_env_packer": packer.name}
    meta.update({f"slurm_env_{k}": v for k, v in result.figures.items()})
    return ResolvedEnv(result.path, True, meta)
