"""Build genuine, tiny conda packages offline into a local conda channel.

No conda channel is reachable from the machines this project is developed and tested on, so the tests make
their own: real conda archives (``info/index.json``, ``info/paths.json``, the files) written with
conda-package-handling, in a channel directory indexed by py-rattler (``<channel>/<subdir>/repodata.json``).

Packages (all ``.tar.bz2`` by default, so that the stand-in unpacker can extract them with nothing but a
Python 3 standard library on the cluster; ``.conda`` needs zstd, which Python gets only from 3.14 on):

* ``python-shim`` (linux-64 and linux-aarch64): ``bin/python`` is a sh script running the machine's python3,
  plus ``etc/conda/activate.d/python-shim.sh`` that puts ``$CONDA_PREFIX/lib/python3.11/site-packages`` on
  PYTHONPATH.
* ``dagster-pipes`` (noarch generic): the files of the dagster_pipes installed in this venv, same version.
* ``example-lib`` (noarch generic), at a version given by the caller, in two builds: ``cpu_0`` and ``gpu_0``
  (module ``example_lib`` with ``VERSION`` and ``VARIANT``).

Output is byte-for-byte deterministic for the same inputs (fixed mtimes, modes, owners and file order).

Usage: python tests/standins/make_conda_packages.py CHANNEL_DIR [--example-lib-version 1.0] [--format .conda]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import conda_package_handling.api as cph_api
import conda_package_handling.tarball as cph_tarball

# Fixed metadata so that rebuilding gives identical archives (and identical sha256 in the lock file).
TIMESTAMP_MS = 1_700_000_000_000
MTIME = TIMESTAMP_MS // 1000
SITE_PACKAGES = "lib/python3.11/site-packages"
SHIM_PLATFORMS = ("linux-64", "linux-aarch64")
EXAMPLE_LIB_BUILDS = ("cpu", "gpu")

PYTHON_SHIM = """#!/bin/sh
# python-shim: the conda environment's python is the machine's python3.
if [ -x /usr/bin/python3 ]; then
    exec /usr/bin/python3 "$@"
fi
exec python3 "$@"
"""

PYTHON_SHIM_ACTIVATE = """# python-shim: make the prefix's site-packages importable by the machine's python3.
export PYTHONPATH="${CONDA_PREFIX}/lib/python3.11/site-packages${PYTHONPATH:+:${PYTHONPATH}}"
"""


def _deterministic_order(prefix: str, files: list[str]) -> list[str]:
    """cph sorts members with Python's salted ``hash()``: replace by info/ first, then by path."""
    return sorted(files, key=lambda f: (not f.startswith("info" + os.sep), f))


def _write_package(
    out_dir: Path,
    *,
    name: str,
    version: str,
    build: str,
    build_number: int,
    subdir: str,
    files: Mapping[str, tuple[bytes, int]],
    depends: list[str],
    fmt: str,
) -> Path:
    """Stage ``files`` ({relative path: (content, mode)}) with conda metadata and archive them with cph."""
    noarch = subdir == "noarch"
    index = {
        "arch": {"linux-64": "x86_64", "linux-aarch64": "aarch64"}.get(subdir),
        "build": build,
        "build_number": build_number,
        "depends": depends,
        "license": "Apache-2.0",
        "name": name,
        "platform": None if noarch else "linux",
        "subdir": subdir,
        "timestamp": TIMESTAMP_MS,
        "version": version,
    }
    if noarch:
        index["noarch"] = "generic"
    index = {k: v for k, v in index.items() if v is not None}
    paths = [
        {
            "_path": rel,
            "path_type": "hardlink",
            "sha256": hashlib.sha256(content).hexdigest(),
            "size_in_bytes": len(content),
        }
        for rel, (content, _mode) in sorted(files.items())
    ]
    meta = {
        "info/index.json": json.dumps(index, indent=2, sort_keys=True).encode() + b"\n",
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2, sort_keys=True).encode()
        + b"\n",
        "info/files": "".join(p["_path"] + "\n" for p in paths).encode(),
        "info/about.json": json.dumps({"summary": f"{name}: dagster-slurm test package"}).encode() + b"\n",
    }
    with tempfile.TemporaryDirectory(prefix="condapkg-") as staging:
        root = Path(staging)
        members = {**{k: (v, 0o644) for k, v in meta.items()}, **files}
        for rel, (content, mode) in members.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            os.chmod(target, mode)
            os.utime(target, (MTIME, MTIME))
        for d in sorted({p for rel in members for p in Path(rel).parents if str(p) != "."}, reverse=True):
            os.chmod(root / d, 0o755)
            os.utime(root / d, (MTIME, MTIME))
        out_dir.mkdir(parents=True, exist_ok=True)
        file_name = f"{name}-{version}-{build}{fmt}"
        target = out_dir / file_name
        if target.exists():
            target.unlink()
        original = cph_tarball._sort_file_order
        cph_tarball._sort_file_order = _deterministic_order
        try:
            cph_api.create(str(root), sorted(members), file_name, out_folder=str(out_dir))
        finally:
            cph_tarball._sort_file_order = original
    return target


def _dagster_pipes_files() -> tuple[str, dict[str, tuple[bytes, int]]]:
    import dagster_pipes

    src = Path(dagster_pipes.__file__).parent
    files = {}
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            rel = f"{SITE_PACKAGES}/dagster_pipes/{path.relative_to(src).as_posix()}"
            files[rel] = (path.read_bytes(), 0o644)
    from importlib.metadata import version

    return version("dagster-pipes"), files


def build_channel(channel_dir: Path | str, example_lib_version: str = "1.0", fmt: str = ".tar.bz2") -> Path:
    """Write the test packages into ``channel_dir`` (created if missing) and index it; return the channel dir.

    Existing archives of the same name are overwritten; other archives already in the channel are kept and
    indexed too, so calling this twice with two example-lib versions gives a channel holding both.
    """
    if fmt not in (".tar.bz2", ".conda"):
        raise ValueError(f"fmt must be '.tar.bz2' or '.conda', not {fmt!r}")
    channel = Path(channel_dir).resolve()
    for subdir in SHIM_PLATFORMS:
        _write_package(
            channel / subdir,
            name="python-shim",
            version="3.11",
            build="0",
            build_number=0,
            subdir=subdir,
            files={
                "bin/python": (PYTHON_SHIM.encode(), 0o755),
                "etc/conda/activate.d/python-shim.sh": (PYTHON_SHIM_ACTIVATE.encode(), 0o644),
            },
            depends=[],
            fmt=fmt,
        )
    pipes_version, pipes_files = _dagster_pipes_files()
    _write_package(
        channel / "noarch",
        name="dagster-pipes",
        version=pipes_version,
        build="0",
        build_number=0,
        subdir="noarch",
        files=pipes_files,
        depends=["python-shim 3.11.*"],
        fmt=fmt,
    )
    for variant in EXAMPLE_LIB_BUILDS:
        module = f'"""example_lib: a dagster-slurm test package."""\nVERSION = "{example_lib_version}"\nVARIANT = "{variant}"\n'
        _write_package(
            channel / "noarch",
            name="example-lib",
            version=example_lib_version,
            build=f"{variant}_0",
            build_number=0,
            subdir="noarch",
            files={f"{SITE_PACKAGES}/example_lib/__init__.py": (module.encode(), 0o644)},
            depends=["python-shim 3.11.*"],
            fmt=fmt,
        )
    index_channel(channel)
    return channel


def index_channel(channel: Path) -> None:
    """Write ``repodata.json`` into every subdir of ``channel`` with py-rattler's indexer."""
    from rattler.index import index_fs

    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    # The indexer stamps each record with the time of indexing: pin it so the lock file is reproducible.
    for repodata_path in sorted(channel.glob("*/repodata.json")):
        repodata = json.loads(repodata_path.read_text())
        for key in ("packages", "packages.conda"):
            for record in repodata.get(key, {}).values():
                if "indexed_timestamp" in record:
                    record["indexed_timestamp"] = TIMESTAMP_MS
        repodata_path.write_text(json.dumps(repodata, indent=1, sort_keys=True) + "\n")


def make_custom_package(
    out_dir: Path | str,
    name: str,
    version: str,
    files: Mapping[str, bytes | str],
    depends: list[str] | None = None,
    build: str = "0",
    subdir: str = "noarch",
    fmt: str = ".conda",
) -> Path:
    """Build one extra package (e.g. for ``--inject``) outside any channel; return the archive path."""
    encoded = {k: (v.encode() if isinstance(v, str) else v, 0o644) for k, v in files.items()}
    return _write_package(
        Path(out_dir),
        name=name,
        version=version,
        build=build,
        build_number=0,
        subdir=subdir,
        files=encoded,
        depends=list(depends or []),
        fmt=fmt,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("channel_dir", type=Path)
    parser.add_argument("--example-lib-version", default="1.0")
    parser.add_argument("--format", dest="fmt", default=".tar.bz2", choices=[".tar.bz2", ".conda"])
    args = parser.parse_args(argv)
    channel = build_channel(args.channel_dir, args.example_lib_version, args.fmt)
    for path in sorted(channel.rglob("*")):
        if path.is_file():
            print(path.relative_to(channel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
