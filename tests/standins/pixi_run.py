#!/usr/bin/env python3
"""Stand-in for ``pixi run [--frozen|--locked] [--manifest-path M] TASK [ARGS...]`` (pixi cannot be
installed here). Runs TASK from pixi.toml ``[tasks]`` or pyproject.toml ``[tool.pixi.tasks]`` with
``sh -c`` in the manifest's folder, as pixi does. Nothing else of pixi is imitated."""

import os
import subprocess
import sys
from pathlib import Path

import tomllib


def find_task(folder: Path, task: str) -> str | None:
    for name, section in (("pixi.toml", ("tasks",)), ("pyproject.toml", ("tool", "pixi", "tasks"))):
        path = folder / name
        if path.is_file():
            table = tomllib.loads(path.read_text())
            for part in section:
                table = table.get(part, {})
            value = table.get(task)
            if isinstance(value, dict):
                value = value.get("cmd")
            if isinstance(value, str):
                return value
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "run":
        print("pixi stand-in: only `pixi run TASK` is supported", file=sys.stderr)
        return 2
    args, folder = argv[1:], Path.cwd()
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "--manifest-path":
            folder = Path(args.pop(0)).resolve()
            folder = folder if folder.is_dir() else folder.parent
    if not args:
        print("pixi stand-in: no task given", file=sys.stderr)
        return 2
    while not (folder / "pixi.toml").exists() and not (folder / "pyproject.toml").exists() and folder != folder.parent:
        folder = folder.parent
    command = find_task(folder, args[0])
    if command is None:
        print(f"pixi stand-in: unknown task {args[0]!r} in {folder}", file=sys.stderr)
        return 1
    return subprocess.call(["sh", "-c", command + " " + " ".join(args[1:])], cwd=folder, env=os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
