"""The cache key of a packed environment. Pure.

It hashes the lock file's bytes, the normalised pack command, the target platform and the
contents of the injected files (all ``--inject`` files, or only those matching ``cache_inject_globs``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

KEY_LENGTH = 20


def inject_values(pack_cmd: Sequence[str]) -> list[str]:
    """What a pixi-pack command passes to ``-i``/``--inject``, read as pixi-pack's parser does: the option
    takes zero or more values, greedily (every following argument up to the next option, so a project
    path placed after it is swallowed too), or one value as ``--inject=F`` / ``-iF``."""
    out: list[str] = []
    args = list(pack_cmd)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-i", "--inject"):
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                out.append(args[i])
                i += 1
            continue
        if arg.startswith("--inject="):
            out.append(arg.split("=", 1)[1])
        elif arg.startswith("-i") and not arg.startswith("--") and len(arg) > 2:
            out.append(arg[2:])
        i += 1
    return [v for v in out if v]


PACKAGE_SUFFIXES = (".conda", ".tar.bz2", ".whl")


def swallowed_values(pack_cmd: Sequence[str]) -> list[str]:
    """Values after ``--inject`` that are no package (a manifest or a folder, most likely the project)."""
    return [v for v in inject_values(pack_cmd) if not v.endswith(PACKAGE_SUFFIXES)]


def inject_files(pack_cmd: Sequence[str], cwd: Path) -> list[Path]:
    """The files a pixi-pack command injects, resolved against ``cwd`` (globs expanded, as pixi's task
    shell does)."""
    out: list[Path] = []
    for value in inject_values(pack_cmd):
        if not value.endswith(PACKAGE_SUFFIXES):  # pixi-pack skips what is no package (see swallowed_values)
            continue
        out.extend(Path(p) for p in sorted(glob.glob(str(cwd / value))) or [str(cwd / value)])
    return out


def glob_files(patterns: Iterable[str], cwd: Path) -> set[Path]:
    """Files matching any of ``patterns`` (recursive ``**``), relative to ``cwd``."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(Path(p).resolve() for p in glob.glob(str(cwd / pattern), recursive=True) if os.path.isfile(p))
    return found


def normalise_command(cmd: Sequence[str] | str) -> list[str]:
    import shlex

    parts = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    return [p for p in (part.strip() for part in parts) if p]


def files_for_key(pack_cmd: Sequence[str] | str, cwd: Path, cache_inject_globs: Sequence[str] | None) -> list[Path]:
    files = [p.resolve() for p in inject_files(normalise_command(pack_cmd), cwd)]
    if cache_inject_globs is not None:
        allowed = glob_files(cache_inject_globs, cwd)
        files = [p for p in files if p in allowed]
    return sorted(set(files))


def compute_cache_key(
    lock_bytes: bytes,
    pack_cmd: Sequence[str] | str,
    platform: str,
    files: Sequence[Path] = (),
    extra: Sequence[str] = (),
) -> str:
    h = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    feed("lock", lock_bytes)
    feed("cmd", "\0".join(normalise_command(pack_cmd)).encode())
    feed("platform", platform.encode())
    for path in sorted(files):
        feed("file:" + path.name, path.read_bytes() if path.exists() else b"<missing>")
    for item in extra:
        feed("extra", item.encode())
    return h.hexdigest()[:KEY_LENGTH]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
