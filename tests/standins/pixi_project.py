"""Build a small pixi workspace (pixi.toml + pixi.lock) over a local channel of genuine conda packages.

``build_pixi_project(dest_dir)`` writes::

    dest_dir/channel/{linux-64,linux-aarch64,noarch}/*.tar.bz2 + repodata.json
    dest_dir/project/pixi.toml
    dest_dir/project/pixi.lock      (solved by py-rattler against the local channel)

and returns ``dest_dir/project``. The channel is referenced by an absolute ``file://`` URL (the lock file
must name it absolutely: pixi and pixi-pack both read package URLs from the lock), so the project is
machine-specific and is built fresh in a temp dir by each test.

Environments: ``default`` (example-lib build ``cpu_*``) and ``gpu`` (example-lib build ``gpu_*``), each
locked for linux-64 and linux-aarch64. The lock is written by py-rattler (lock format version 7; pixi
itself currently writes 6): tests must hash the lock file's bytes, never a re-serialisation.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path

import rattler
from rattler import LockChannel, LockFile, LockPlatform

from tests.standins.make_conda_packages import EXAMPLE_LIB_BUILDS, SHIM_PLATFORMS, build_channel

PLATFORMS = SHIM_PLATFORMS
ENVIRONMENTS = {"default": "cpu", "gpu": "gpu"}


def _pixi_toml(channel_url: str, example_lib_version: str) -> str:
    return f"""[workspace]
name = "dagster-slurm-standin"
version = "0.1.0"
channels = ["{channel_url}"]
platforms = {list(PLATFORMS)!r}

[dependencies]
python-shim = "3.11.*"
dagster-pipes = "*"

[feature.cpu.dependencies]
example-lib = {{ version = "=={example_lib_version}", build = "cpu*" }}

[feature.gpu.dependencies]
example-lib = {{ version = "=={example_lib_version}", build = "gpu*" }}

[environments]
default = ["cpu"]
gpu = ["gpu"]
""".replace("'", '"')


async def _solve(channel_url: str, platform: str, specs: list[str]) -> list[rattler.RepoDataRecord]:
    return await rattler.solve(
        sources=[rattler.Channel(channel_url)],
        specs=specs,
        platforms=[platform, "noarch"],
        virtual_packages=[],
    )


def build_pixi_project(dest_dir: Path | str, example_lib_version: str = "1.0") -> Path:
    """Build the local channel and a pixi project locked against it under ``dest_dir``; return the project dir.

    Calling it again on the same ``dest_dir`` with another ``example_lib_version`` adds that version to the
    channel and re-locks the project to it (old archives stay in the channel, as on a real channel).
    """
    dest = Path(dest_dir).resolve()
    channel = build_channel(dest / "channel", example_lib_version)
    channel_url = channel.as_uri() + "/"
    project = dest / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "pixi.toml").write_text(_pixi_toml(channel_url, example_lib_version))

    lock_platforms = [LockPlatform(p) for p in PLATFORMS]
    lock = LockFile(lock_platforms)
    for env_name, variant in ENVIRONMENTS.items():
        assert variant in EXAMPLE_LIB_BUILDS
        specs = ["python-shim 3.11.*", "dagster-pipes", f"example-lib =={example_lib_version} {variant}*"]
        lock.set_channels(env_name, [LockChannel(channel_url)])
        for platform in lock_platforms:
            records = asyncio.run(_solve(channel_url, platform.name, specs))
            for record in sorted(records, key=lambda r: r.name.normalized):
                lock.add_conda_package(env_name, platform, record)
    lock.to_path(project / "pixi.lock")
    return project


def build_pixi_project_in_subprocess(dest_dir: Path | str, example_lib_version: str = "1.0") -> Path:
    """``build_pixi_project`` in a child python, so that py-rattler is never loaded into the caller.

    py-rattler's runtime threads can (rarely, ~1 run in 60 here) abort the interpreter at exit with
    "PyGILState_Release: thread state ... must be current": a pytest process that imported rattler could then
    end with SIGABRT after all tests passed. The child leaves with ``os._exit``.
    """
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.standins.pixi_project", str(dest_dir), example_lib_version],
        cwd=repo,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the pixi project failed ({proc.returncode}): {proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def write_pixi_pack_executables(bin_dir: Path | str) -> dict[str, Path]:
    """Write ``pixi-pack``, ``pixi-unpack`` and ``pixi`` (``pixi run TASK`` only) wrappers into ``bin_dir``
    (for callers that look them up on PATH).

    ``pixi-pack`` runs ``tests/standins/pixi_pack.py`` with the interpreter running this function (the project
    venv, which has py-rattler); ``pixi-unpack`` runs ``tests/standins/pixi_unpack.py`` with it.
    """
    bin_path = Path(bin_dir)
    bin_path.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    written = {}
    for name, script in (("pixi-pack", "pixi_pack.py"), ("pixi-unpack", "pixi_unpack.py"), ("pixi", "pixi_run.py")):
        target = bin_path / name
        target.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(here / script))} "$@"\n'
        )
        target.chmod(0o755)
        written[name] = target
    return written


if __name__ == "__main__":
    print(build_pixi_project(sys.argv[1], *(sys.argv[2:3])), flush=True)
    sys.stderr.flush()
    os._exit(0)
