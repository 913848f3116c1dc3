#!/usr/bin/env python3
"""Offline stand-in for ``pixi-pack`` (the current, subcommand-less CLI), built on py-rattler.

    pixi-pack [-e|--environment E] [-p|--platform P] [-i|--inject FILE]... [--ignore-pypi-non-wheel]
              [--create-executable] [-o|--output-file OUT] [--use-cache DIR] [MANIFEST_PATH_OR_DIR]

Reads ``pixi.lock`` next to the manifest (or in the given directory), takes the conda records locked for
environment E (default ``default``) and platform P (a subdir such as ``linux-64`` or a platform name of the
lock; default: this machine's subdir), copies their archives from ``file://`` URLs (plus ``--inject``ed
``.conda``/``.tar.bz2``/``.whl`` files) into ``channel/<subdir>/`` and writes, like pixi-pack:

* ``channel/<subdir>/repodata.json`` (all records under ``packages.conda``, ``repodata_version`` 2),
* ``pixi-pack.json`` (``{"version": "1", "pixi-pack-version": ..., "platform": P}``),
* ``environment.yml`` (``channels: [./channel, nodefaults]``, ``name=version=build`` pins),

then archives it deterministically into ``environment.tar`` (uncompressed), or with ``--create-executable``
into a self-extracting ``environment.sh`` (``-o`` with its extension replaced by ``.sh``, as pixi-pack does).
The self-extractor embeds ``pixi_unpack.py`` (stdlib-only) instead of the pixi-unpack binary, so it needs
``bash`` and ``python3`` on the target.

Run it with the project's venv python (``.venv/bin/python tests/standins/pixi_pack.py ...``); started with
another python it re-executes itself with ``<repo>/.venv/bin/python`` when that exists.
"""

import importlib.util
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if importlib.util.find_spec("rattler") is None:  # started by a python without py-rattler: use the venv
    _venv_python = os.path.join(_REPO, ".venv", "bin", "python")
    if os.path.exists(_venv_python) and os.path.realpath(sys.executable) != os.path.realpath(_venv_python):
        os.execv(_venv_python, [_venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit("pixi_pack.py needs py-rattler: run it with the project's venv python")

import argparse
import asyncio
import base64
import hashlib
import json
import platform as _platform
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from rattler import LockFile, PackageRecord, RepoDataRecord

PIXI_PACK_FORMAT_VERSION = "1"
STANDIN_VERSION = "0.0.0+dagster-slurm-standin"
# The version `--version` reports: the release whose contract this stand-in models, or what a test asks for
# (PIXI_PACK_STANDIN_VERSION). Below 0.7.0 the CLI had subcommands (`pixi-pack pack ...`): the stand-in then
# refuses the current CLI with clap's usage error (exit 2), as such a release does.
CLI_VERSION = os.environ.get("PIXI_PACK_STANDIN_VERSION", "0.7.10")
# --create-executable downloads pixi-unpack from GitHub unless --pixi-unpack-source names a copy; the stand-in
# cannot download, so PIXI_PACK_STANDIN_OFFLINE=1 makes it fail as an offline machine does (otherwise it embeds
# its own unpacker, as if the download had worked).
OFFLINE = os.environ.get("PIXI_PACK_STANDIN_OFFLINE") == "1"
DETERMINISTIC_MTIME = 1153704088  # what the tar crate's HeaderMode::Deterministic writes
UNPACKER_SOURCE = Path(__file__).with_name("pixi_unpack.py")
PY_HEREDOC = "__PIXI_UNPACK_STANDIN_PY__"


class PackError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def current_subdir() -> str:
    machine = _platform.machine().lower()
    if sys.platform.startswith("linux"):
        return "linux-" + {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
            machine, machine
        )
    if sys.platform == "darwin":
        return "osx-arm64" if machine in ("arm64", "aarch64") else "osx-64"
    return "win-64"


# --------------------------------------------------------------------------------------------- pack


def load_lockfile(manifest_path: Path) -> tuple[Path, LockFile]:
    if not manifest_path.exists():
        raise PackError(f"manifest path does not exist at {manifest_path}")
    directory = manifest_path if manifest_path.is_dir() else manifest_path.parent
    lock_path = directory / "pixi.lock"
    if not lock_path.is_file():
        raise PackError(f"could not read lockfile at {lock_path}: no such file")
    try:
        return lock_path, LockFile.from_path(lock_path)
    except Exception as e:  # rattler raises its own exception types
        raise PackError(f"could not read lockfile at {lock_path}: {e}") from e


def _file_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and url.startswith("/"):
        return Path(url)
    raise PackError(f"the stand-in only copies local (file://) packages; cannot fetch {url}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_package(record: RepoDataRecord, channel_dir: Path, cache_dir: Path | None) -> None:
    out_dir = channel_dir / record.subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / record.file_name
    cached = cache_dir / record.subdir / record.file_name if cache_dir else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, dest)
        return
    src = _file_path(record.url)
    if not src.is_file():
        raise PackError(f"could not download package: {record.url} does not exist")
    shutil.copyfile(src, dest)
    # pixi-pack itself copies file:// packages unchecked; the stand-in refuses an archive that does not
    # match the lock so that a broken test channel shows up here and not at unpack time.
    if record.sha256 is not None and _sha256(dest) != record.sha256.hex():
        raise PackError(f"package {record.file_name} does not match the sha256 in pixi.lock")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dest, cached)


def _record_json(record: PackageRecord) -> dict:
    data = json.loads(record.to_json())
    for key in ("fn", "url", "channel"):
        data.pop(key, None)
    return data


def _write_repodata(channel_dir: Path, packages: list[tuple[str, PackageRecord]]) -> None:
    per_subdir: dict[str, dict[str, dict]] = {}
    for file_name, record in packages:
        per_subdir.setdefault(record.subdir, {})[file_name] = _record_json(record)
    for subdir, records in sorted(per_subdir.items()):
        repodata = {
            "info": {"subdir": subdir},
            "packages": {},
            "packages.conda": dict(sorted(records.items())),
            "removed": [],
            "repodata_version": 2,
        }
        (channel_dir / subdir / "repodata.json").write_text(json.dumps(repodata, indent=2))


def _environment_yml(packages: list[tuple[str, PackageRecord]], wheels: list[tuple[str, str]]) -> str:
    lines = ["channels:", "  - ./channel", "  - nodefaults", "dependencies:"]
    lines += [f"  - {r.name.normalized}={r.version}={r.build}" for _, r in packages]
    if wheels:
        lines += ["  - pip:", "    - --no-index", "    - --find-links ./pypi"]
        lines += [f"    - {name}=={version}" for name, version in wheels]
    return "\n".join(lines) + "\n"


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    """Depth-first in file-name order (as pixi-pack's WalkDir::sort_by_file_name), deterministic headers."""

    def walk(directory: Path):
        for path in sorted(directory.iterdir(), key=lambda p: p.name):
            yield path
            if path.is_dir() and not path.is_symlink():
                yield from walk(path)

    for path in walk(root):
        info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
        info.mtime = DETERMINISTIC_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if info.isdir():
            info.mode = 0o755
            tar.addfile(info)
        else:
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)


def _header(unpacker_source: str) -> str:
    if PY_HEREDOC in unpacker_source:
        raise PackError("the unpacker source contains the heredoc terminator")
    return f"""#!/usr/bin/env bash
# Self-extracting environment written by the dagster-slurm pixi-pack stand-in ({STANDIN_VERSION}).
# Layout as pixi-pack's: this header, '@@END_HEADER@@', the base64 tar of the pack, '@@END_ARCHIVE@@'.
# The unpacker is embedded below as Python (standard library only) instead of the pixi-unpack binary.
set -euo pipefail
USAGE="
Usage: $0 [OPTIONS]

Options:
  -o, --output-directory <DIR>    Where to unpack the environment: DIR/<env-name> and DIR/activate.sh [default: .]
  -e, --env-name <NAME>           Name of the environment [default: env]
  -s, --shell <SHELL>             Sets the shell [options: bash, zsh]
  -v, --verbose                   Increase logging verbosity
  -q, --quiet                     Decrease logging verbosity
  -h, --help                      Print help
"
for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    echo "$USAGE"
    exit 0
  fi
done
PYTHON="${{PIXI_UNPACK_PYTHON:-}}"
if [ -z "$PYTHON" ]; then
  PYTHON="$(command -v python3 || true)"
fi
if [ -z "$PYTHON" ]; then
  echo "ERROR: python3 is needed to unpack this environment and none is on PATH (set PIXI_UNPACK_PYTHON)." >&2
  exit 1
fi
# As pixi-pack's header: the unpacker is written into "mktemp -d" and EXECUTED from there (a noexec or full
# TMPDIR fails here, as with the real binary); the temp folder is removed on success, left on failure.
tmp="$(mktemp -d)"
printf '#!%s\n' "$PYTHON" > "$tmp/pixi-unpack"
cat >> "$tmp/pixi-unpack" <<'{PY_HEREDOC}'
{unpacker_source.rstrip()}
{PY_HEREDOC}
chmod +x "$tmp/pixi-unpack"
"$tmp/pixi-unpack" "$0" --self-extracting "$@"
rm -rf "$tmp"
exit 0
@@END_HEADER@@
"""


def _unpacker(args: argparse.Namespace) -> str:
    """The unpacker the self-extractor embeds: from --pixi-unpack-source (a local path; a URL is downloaded),
    else downloaded from GitHub."""
    source = args.pixi_unpack_source
    if source and not source.startswith(("http://", "https://")):
        path = Path(source[len("file://"):] if source.startswith("file://") else source)
        if not path.is_file():
            raise PackError(f"failed to read pixi-unpack from {source}: no such file")
        return path.read_text()
    if OFFLINE:
        url = source or f"https://github.com/Quantco/pixi-pack/releases/download/v{CLI_VERSION}/pixi-unpack-x86_64-unknown-linux-musl"
        raise PackError(f"failed to download pixi-unpack executable from {url}: error sending request (offline)")
    return UNPACKER_SOURCE.read_text()


def _write_output(pack_dir: Path, output_file: Path, create_executable: bool, unpacker: str = "") -> Path:
    output_file.parent.mkdir(parents=True, exist_ok=True)
    if not create_executable:
        with tarfile.open(output_file, "w", format=tarfile.GNU_FORMAT) as tar:
            _add_tree(tar, pack_dir)
        return output_file
    target = output_file.with_suffix(".sh")
    with tempfile.TemporaryFile() as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            _add_tree(tar, pack_dir)
        raw.seek(0)
        payload = base64.b64encode(raw.read())
    with open(target, "wb") as f:
        f.write(_header(unpacker or UNPACKER_SOURCE.read_text()).encode())
        f.write(payload)
        f.write(b"\n@@END_ARCHIVE@@\n")
    os.chmod(target, 0o755)
    return target


def pack(args: argparse.Namespace) -> Path:
    manifest = Path(args.manifest_path).resolve()
    _, lock = load_lockfile(manifest)
    env = lock.environment(args.environment)
    if env is None:
        raise PackError(f"environment not found in lockfile: {args.environment}")
    lock_platform = next((p for p in env.platforms() if p.name == args.platform), None)
    if lock_platform is None:
        names = ", ".join(sorted(p.name for p in env.platforms()))
        raise PackError(
            f"platform not found in lockfile: {args.platform} (environment {args.environment} has {names})"
        )
    subdir = str(lock_platform.subdir) if getattr(lock_platform, "subdir", None) else lock_platform.name

    records = env.conda_repodata_records_for_platform(lock_platform) or []
    pypi = env.pypi_packages_for_platform(lock_platform) or []
    wheels_src: list[tuple[Path, str, str]] = []
    for pkg in pypi:
        location = str(pkg.location)
        if location.endswith(".whl"):
            wheels_src.append((_file_path(location), str(pkg.name), str(pkg.version)))
        elif args.ignore_pypi_non_wheel:
            log(f"WARN ignoring PyPI package {pkg.name} since it is not a wheel file")
        else:
            raise PackError(
                f"package {pkg.name} is not a wheel file, we currently require all dependencies to be wheels."
            )

    cache_dir = Path(args.use_cache).resolve() if args.use_cache else None
    with tempfile.TemporaryDirectory(prefix="pixi-pack-") as tmp:
        pack_dir = Path(tmp)
        channel_dir = pack_dir / "channel"
        channel_dir.mkdir()
        log(f"Downloading {len(records)} packages...")
        packages: list[tuple[str, PackageRecord]] = []
        for record in records:
            _copy_package(record, channel_dir, cache_dir)
            packages.append((record.file_name, record))

        injected_conda = [Path(p) for p in args.inject if p.endswith((".conda", ".tar.bz2"))]
        injected_whl = [Path(p) for p in args.inject if p.endswith(".whl")]
        # what is no package is skipped silently, as by the real tool: a project path swallowed by the greedy
        # --inject (``--inject x.conda pyproject.toml``) leaves the project at its default, the working directory
        for path in injected_conda:
            if not path.is_file():
                raise PackError(f"could not copy file to channel directory: {path} does not exist")
            record = asyncio.run(RepoDataRecord.from_package_archive(path))
            (channel_dir / record.subdir).mkdir(exist_ok=True)
            shutil.copyfile(path, channel_dir / record.subdir / path.name)
            packages.append((path.name, record))
        if injected_conda:
            try:
                PackageRecord.validate([r for _, r in packages])
            except Exception as e:
                raise PackError(f"injected packages are not compatible with the environment: {e}") from e

        wheels: list[tuple[str, str]] = []
        for src, name, version in wheels_src:
            (pack_dir / "pypi").mkdir(exist_ok=True)
            shutil.copyfile(src, pack_dir / "pypi" / src.name)
            wheels.append((name, version))
        for path in injected_whl:
            (pack_dir / "pypi").mkdir(exist_ok=True)
            shutil.copyfile(path, pack_dir / "pypi" / path.name)
            parts = path.name.split("-")
            wheels.append((parts[0], parts[1] if len(parts) > 1 else ""))
            log("WARN Currently we cannot verify that injected wheels are compatible with the environment.")

        _write_repodata(channel_dir, packages)
        metadata = {
            "version": PIXI_PACK_FORMAT_VERSION,
            "pixi-pack-version": STANDIN_VERSION,
            "platform": subdir,
        }
        (pack_dir / "pixi-pack.json").write_text(json.dumps(metadata, indent=2))
        (pack_dir / "environment.yml").write_text(_environment_yml(packages, wheels))

        default_name = "environment.sh" if args.create_executable else "environment.tar"
        output = Path(args.output_file) if args.output_file else Path.cwd() / default_name
        written = _write_output(pack_dir, output.resolve(), args.create_executable, _unpacker(args))
    log(f"Created pack at {written} with size {written.stat().st_size} B.")
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pixi-pack", description="A command line tool to pack conda environments for easy sharing"
    )
    parser.add_argument("-e", "--environment", default="default", help="Environment to pack")
    parser.add_argument("-p", "--platform", default=current_subdir(), help="Platform to pack")
    parser.add_argument(
        "manifest_path",
        nargs="?",
        default=os.getcwd(),
        help="The path to pixi.toml, pyproject.toml, or the project directory",
    )
    parser.add_argument("-o", "--output-file", help="Output file to write the pack to")
    parser.add_argument("--use-cache", help="Use a cache directory for downloaded packages")
    parser.add_argument(
        "-i",
        "--inject",
        action="extend",
        nargs="*",
        default=[],
        help="Inject an additional conda package into the final prefix",
    )
    parser.add_argument("--ignore-pypi-non-wheel", action="store_true")
    parser.add_argument("--create-executable", action="store_true", help="Create self-extracting executable")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="count", default=0)
    parser.add_argument("--pixi-unpack-source", help="Source of the pixi-unpack executable (path or URL)")
    for unsupported in ("--auth-file", "--config"):
        parser.add_argument(unsupported, help=argparse.SUPPRESS)
    parser.add_argument("--directory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pixi_unpack_source and not args.create_executable:
        parser.error("the argument '--pixi-unpack-source <PIXI_UNPACK_SOURCE>' requires '--create-executable'")
    for name in ("auth_file", "config"):
        if getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is not supported by the offline stand-in")
    if args.directory_only:
        parser.error("--directory-only is not supported by the offline stand-in")
    return args


def _older(version: str, than: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("+")[0].split(".")[:3])
    return parts(version) < parts(than)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"] or argv == ["-V"]:
        print(f"pixi-pack {CLI_VERSION}")
        return 0
    if _older(CLI_VERSION, "0.7.0") and (not argv or argv[0] not in ("pack", "unpack")):
        print("error: unrecognized subcommand or unexpected argument\n\nUsage: pixi-pack <COMMAND>\n\n"
              "For more information, try '--help'.", file=sys.stderr)
        return 2
    args = parse_args(argv)
    try:
        pack(args)
    except PackError as e:
        log(f"Error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # py-rattler's runtime threads can abort the interpreter at shutdown (rarely: "PyGILState_Release: thread
    # state must be current"): leave without finalisation so the exit code is always ours.
    os._exit(code)
