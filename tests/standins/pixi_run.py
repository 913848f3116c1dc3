#!/usr/bin/env python3
"""Stand-in for ``pixi run [--frozen|--locked] [-e ENV] [--manifest-path M] TASK [ARGS...]`` (pixi cannot be
installed here). As pixi: the manifest is pixi.toml when there is one (pyproject.toml's ``[tool.pixi]`` is then
ignored), else pyproject.toml; TASK comes from ``[tasks]``, ``[target.<linux-64>.tasks]`` or, for environment
ENV, the tasks of ENV's features; its ``cmd`` is a string or a list, run with ``sh -c`` in the task's ``cwd``
(default: the manifest's folder) with ARGS appended. Nothing else of pixi is imitated."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import tomllib

PLATFORM = "linux-64"


def manifest(folder: Path) -> dict:
    if (folder / "pixi.toml").is_file():
        return tomllib.loads((folder / "pixi.toml").read_text())
    return tomllib.loads((folder / "pyproject.toml").read_text()).get("tool", {}).get("pixi", {})


def find_task(table: dict, env: str | None, task: str):
    spec = table.get("environments", {}).get(env or "default", [])
    features = spec.get("features", []) if isinstance(spec, dict) else spec
    places = [table.get("target", {}).get(PLATFORM, {}).get("tasks", {}), table.get("tasks", {})]
    for feature in features:
        section = table.get("feature", {}).get(feature, {})
        places += [section.get("target", {}).get(PLATFORM, {}).get("tasks", {}), section.get("tasks", {})]
    return next((place[task] for place in places if task in place), None)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "run":
        print("pixi stand-in: only `pixi run TASK` is supported", file=sys.stderr)
        return 2
    args, folder, env = argv[1:], Path.cwd(), None
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "--manifest-path":
            folder = Path(args.pop(0)).resolve()
            folder = folder if folder.is_dir() else folder.parent
        elif flag in ("-e", "--environment"):
            env = args.pop(0)
    if not args:
        print("pixi stand-in: no task given", file=sys.stderr)
        return 2
    while not (folder / "pixi.toml").exists() and not (folder / "pyproject.toml").exists() and folder != folder.parent:
        folder = folder.parent
    value = find_task(manifest(folder), env, args[0])
    cwd = folder
    if isinstance(value, dict):
        cwd = folder / value.get("cwd", ".")
        value = value.get("cmd")
    if isinstance(value, list):
        value = shlex.join(value)
    if not isinstance(value, str):
        print(f"pixi stand-in: unknown task {args[0]!r} in {folder}", file=sys.stderr)
        return 1
    return subprocess.call(["sh", "-c", " ".join([value, *map(shlex.quote, args[1:])])], cwd=cwd, env=os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
