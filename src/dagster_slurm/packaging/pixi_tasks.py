"""What ``pixi run [options] TASK [ARGS...]`` runs, read from the project's manifest as pixi does. Pure.

pixi's manifest is ``pixi.toml`` when there is one, else ``pyproject.toml`` (its ``[tool.pixi]`` tables). A
task is a string, or a table whose ``cmd`` is a string or a list, optionally with a ``cwd``; tasks live under
``[tasks]``, ``[feature.<f>.tasks]`` (visible in environments that include feature ``f``) and
``[target.<platform>.tasks]`` (also inside a feature; the platform is the one pixi runs on, which wins).
Arguments after the task name are appended to its command.
"""

from __future__ import annotations

import platform as _platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# `pixi run` options that take a value (the task name is the first other argument)
_VALUED = {"-e", "--environment", "--manifest-path", "-m", "--executable", "-x", "--color", "--concurrent-downloads",
           "--concurrent-solves", "--tls-root-certs", "--pinning-strategy", "--auth-file", "--config", "-c",
           "--pypi-keyring-provider"}


@dataclass(frozen=True)
class PixiTask:
    command: list[str]
    cwd: Path  # the folder the command runs in (the project folder, or the task's cwd)


def local_platform() -> str:
    """The pixi platform of this machine (where pixi runs the pack task)."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64" if sys.platform == "darwin"
            else "aarch64", "ppc64le": "ppc64le"}.get(machine, machine)
    system = "osx" if sys.platform == "darwin" else "win" if sys.platform == "win32" else "linux"
    return f"{system}-{arch}"


def read_manifest(project: Path) -> dict[str, Any] | None:
    """The pixi tables of the project: ``pixi.toml``, else ``pyproject.toml``'s ``[tool.pixi]``."""
    if (project / "pixi.toml").is_file():
        return tomllib.loads((project / "pixi.toml").read_text())
    if (project / "pyproject.toml").is_file():
        tool = tomllib.loads((project / "pyproject.toml").read_text()).get("tool", {})
        return tool.get("pixi") if isinstance(tool.get("pixi"), dict) else None
    return None


def parse_run(cmd: Sequence[str]) -> tuple[str | None, str, list[str]] | None:
    """``pixi run [opts] TASK [ARGS...]`` -> (environment or None, task, args); None for other commands."""
    args = list(cmd)
    if len(args) < 3 or Path(args[0]).name != "pixi" or args[1] != "run":
        return None
    env, i = None, 2
    while i < len(args):
        arg = args[i]
        if arg in ("-e", "--environment") and i + 1 < len(args):
            env, i = args[i + 1], i + 2
        elif arg.startswith("--environment="):
            env, i = arg.split("=", 1)[1], i + 1
        elif arg in _VALUED:
            i += 2
        elif arg == "--":
            i += 1
        elif arg.startswith("-"):
            i += 1
        else:
            return env, arg, args[i + 1:]
    return None


def _features(manifest: Mapping[str, Any], env: str | None) -> list[str]:
    spec = (manifest.get("environments") or {}).get(env or "default")
    if isinstance(spec, list):
        return [str(f) for f in spec]
    if isinstance(spec, dict):
        return [str(f) for f in spec.get("features") or []]
    return []


def _task_tables(manifest: Mapping[str, Any], env: str | None, platform: str) -> list[Mapping[str, Any]]:
    """Task tables in the order pixi looks them up: the most specific first."""
    tables: list[Mapping[str, Any]] = []
    for feature in reversed(_features(manifest, env)):
        section = (manifest.get("feature") or {}).get(feature) or {}
        tables.append(((section.get("target") or {}).get(platform) or {}).get("tasks") or {})
        tables.append(section.get("tasks") or {})
    tables.insert(0, ((manifest.get("target") or {}).get(platform) or {}).get("tasks") or {})
    tables.append(manifest.get("tasks") or {})
    return tables


def resolve_task(cmd: Sequence[str], project: Path, platform: str | None = None) -> PixiTask | None:
    """The command a ``pixi run`` of a pack task runs (and its folder), or None when it is not one or the task
    has no command of its own."""
    run = parse_run(cmd)
    manifest = read_manifest(project) if run else None
    if run is None or manifest is None:
        return None
    env, name, extra = run
    for table in _task_tables(manifest, env, platform or local_platform()):
        value = table.get(name)
        if value is None:
            continue
        cwd = project
        if isinstance(value, dict):
            cwd = project / str(value.get("cwd") or ".")
            value = value.get("cmd")
        if isinstance(value, str):
            return PixiTask([*shlex.split(value), *extra], cwd)
        if isinstance(value, list):
            return PixiTask([*(str(v) for v in value), *extra], cwd)
        return None  # a task without a command (only depends-on)
    return None
