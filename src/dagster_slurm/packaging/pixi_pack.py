"""The pixi-pack packer: run the pack command, find its declared artefact, unpack it on the cluster."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.cache_key import file_sha256, files_for_key, normalise_command, swallowed_values
from dagster_slurm.packaging.packer import Log, PackResult, RemoteLayout
from dagster_slurm.packaging.pixi_tasks import resolve_task
from dagster_slurm.packaging.run_local import run_build_command
from dagster_slurm.packaging.upload import upload_with_progress

# Placeholders: {platform} the target platform, {output} the artefact path in a fresh build folder,
# {project} the folder holding pixi.lock.
# pixi-pack's --create-executable embeds a pixi-unpack binary; these are the platforms it is built for
PIXI_UNPACK_PLATFORMS = frozenset({"linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64", "win-arm64"})
UNPACKER_MISSING = 43  # install script's exit status when the .tar path finds no pixi-unpack

# pixi-pack releases: 0.7.0 dropped the subcommands (`pixi-pack pack`), 0.7.1 fixed the self-extractor,
# 0.7.7 reads v7 lock files
MIN_VERSION, MIN_VERSION_V7_LOCK = (0, 7, 1), (0, 7, 7)
UPGRADE = "pixi global install pixi-pack pixi-unpack (or: pixi global update pixi-pack)"

DEFAULT_PACK_CMD = [
    "pixi-pack", "--environment", "default", "--platform", "{platform}",
    "--create-executable", "--output-file", "{output}", "{project}",
]


def declared_output(cmd: Sequence[str]) -> str | None:
    """The artefact a pixi-pack command says it writes: ``-o``/``--output-file``, or pixi-pack's default.
    With ``--create-executable`` pixi-pack writes a ``.sh`` whatever ``-o`` says."""
    args = list(cmd)
    executable = "--create-executable" in args
    for i, arg in enumerate(args):
        value = None
        if arg in ("-o", "--output-file") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--output-file="):
            value = arg.split("=", 1)[1]
        if value is not None:
            # pixi-pack replaces the LAST extension: x.tar -> x.sh, foo -> foo.sh, a.tar.bz2 -> a.tar.sh
            return str(Path(value).with_suffix(".sh")) if executable else value
    if any(Path(a).name.startswith("pixi-pack") or a == "pack" for a in args):
        return "environment.sh" if executable else "environment.tar"
    return None


def pixi_task_command(cmd: Sequence[str], project: Path) -> list[str] | None:
    """For ``pixi run [opts] TASK [ARGS]``: the command the task runs (see :mod:`.pixi_tasks`)."""
    task = resolve_task(cmd, project)
    return task.command if task else None


@functools.lru_cache(maxsize=16)
def pixi_pack_version(executable: str, cwd: str) -> tuple[int, ...] | None:
    """``pixi-pack --version`` (asked once per executable and process), or None if it says no version."""
    try:
        proc = subprocess.run([executable, "--version"], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"pixi-pack (\d+)\.(\d+)\.(\d+)", proc.stdout + proc.stderr)
    return tuple(int(x) for x in m.groups()) if m else None


def lock_version(project: Path) -> int | None:
    m = re.search(r"^version:\s*(\d+)", (project / "pixi.lock").read_text(errors="replace")[:200], re.M) \
        if (project / "pixi.lock").is_file() else None
    return int(m.group(1)) if m else None


def check_version(executable: str, project: Path) -> None:
    """Fail with the minimum version and the upgrade command when pixi-pack is too old for this command
    (older releases fail with a usage error that names neither)."""
    version = pixi_pack_version(executable, str(project))
    if version is None:
        return
    lock = lock_version(project)
    need, why = (MIN_VERSION_V7_LOCK, f"to read this v{lock} pixi.lock") if (lock or 0) >= 7 else \
        (MIN_VERSION, "for the command without subcommands and a working self-extractor")
    if version < need:
        have, want = ".".join(map(str, version)), ".".join(map(str, need))
        raise ConfigurationError(f"pixi-pack {have} ({executable}) is too old: dagster-slurm needs pixi-pack >= {want} "
                                 f"{why}. Upgrade it: {UPGRADE}.")


class PixiPackPacker:
    name = "pixi-pack"

    def __init__(self, pack_cmd: Sequence[str] | str | None, project: Path, platform: str,
                 cache_inject_globs: Sequence[str] | None = None, timeout: float = 3600,
                 pixi_unpack_path: str | None = None, pixi_unpack_source: str | None = None):
        self.pixi_unpack_path = pixi_unpack_path
        self.pixi_unpack_source = pixi_unpack_source
        self.template = normalise_command(pack_cmd) if pack_cmd else list(DEFAULT_PACK_CMD)
        if not pack_cmd and pixi_unpack_source:  # the default command: offline, pixi-unpack from a local copy
            self.template[-1:-1] = ["--pixi-unpack-source", pixi_unpack_source]
        self.project = project
        self.platform = platform
        self.cache_inject_globs = cache_inject_globs
        self.timeout = timeout

    def key_command(self) -> list[str]:
        return self.template

    def key_files(self) -> list[Path]:
        task = resolve_task(self.template, self.project)
        return files_for_key(task.command if task else self.template, task.cwd if task else self.project,
                             self.cache_inject_globs)

    def command(self, build_dir: Path) -> list[str]:
        values = {"platform": self.platform, "output": str(build_dir / "environment.sh"), "project": str(self.project)}
        return [arg.format(**values) if "{" in arg else arg for arg in self.template]

    def pack(self, build_dir: Path, log: Log) -> PackResult:
        cmd = self.command(build_dir)
        task = resolve_task(cmd, self.project)
        declared = declared_output(cmd) or declared_output(task.command if task else [])
        if declared is None:
            raise ConfigurationError(
                f"slurm_pack_cmd / pack_cmd `{' '.join(cmd)}` declares no output. Add `--output-file PATH` "
                "(or `-o PATH`) to the pixi-pack call so dagster-slurm knows which artefact to ship."
            )
        effective = pixi_task_command(cmd, self.project) or cmd
        if "--create-executable" in effective and self.platform not in PIXI_UNPACK_PLATFORMS:
            raise ConfigurationError(
                f"pixi-pack --create-executable embeds a pixi-unpack binary, and there is none for {self.platform} "
                f"(only {', '.join(sorted(PIXI_UNPACK_PLATFORMS))}). Set pack_cmd / slurm_pack_cmd without "
                "--create-executable (a .tar, unpacked on the cluster by a pixi-unpack you install there; see "
                "ComputeResource.pixi_unpack_path).")
        for value in swallowed_values(effective):
            log(f"Warning: in `{' '.join(effective)}`, --inject takes every following value, so {value!r} is read "
                "as a package to inject, not as the project; pixi-pack skips it and packs the project in the "
                "working directory (dagster-slurm runs pack commands from the project folder, so that is this "
                "project). Put the project path before --inject, or write --inject=FILE.")
        if Path(effective[0]).name == "pixi-pack":
            check_version(effective[0], task.cwd if task else self.project)
        artifact = ((task.cwd if task and not declared_output(cmd) else self.project) / declared).resolve()
        started = time.time()
        log(f"Packing: {' '.join(cmd)}")
        try:
            run_build_command(cmd, self.project, "pack command (ComputeResource.pack_cmd / slurm_pack_cmd)",
                              self.timeout)
        except ConfigurationError as err:
            if "--create-executable" in effective and "pixi-unpack" in str(err) and "download" in str(err).lower():
                raise ConfigurationError(
                    f"{err}\npixi-pack --create-executable downloads pixi-unpack from GitHub while packing. On a "
                    "machine without that access, set ComputeResource.pixi_unpack_source to a local pixi-unpack "
                    "binary (or a reachable URL), or add --pixi-unpack-source to your pack command.") from None
            raise
        if not artifact.is_file() or artifact.stat().st_mtime < started - 1:
            raise ConfigurationError(
                f"The pack command `{' '.join(cmd)}` succeeded but made no artefact at {artifact} (its declared "
                "output). Check its --output-file / -o and that it packs the environment you expect."
            )
        return PackResult(artifact, file_sha256(artifact), artifact.stat().st_size,
                          extra={"self_extracting": artifact_kind(artifact) == "executable"})

    def upload(self, transport, result: PackResult, layout: RemoteLayout, staging: str, log: Log) -> dict[str, float]:
        upload_with_progress(transport, result.artifact, f"{staging}/.artifact/{result.artifact.name}", log)
        return {"upload_bytes": result.size}

    def install_script(self, result: PackResult, layout: RemoteLayout, staging: str) -> str:
        """Verify and unpack into ``staging``. A self-extractor runs pixi-unpack from ``mktemp -d`` and unpacks
        there: its TMPDIR is a folder in the staging area (login nodes often mount /tmp noexec or small),
        removed with it. A plain tar needs pixi-unpack on the cluster (``pixi_unpack_path``, PATH or
        ``~/.pixi/bin``: a non-interactive shell usually lacks the latter)."""
        q = shlex.quote
        name = result.artifact.name
        lines = [
            f"cd {q(staging)}/.artifact",
            f"echo {q(result.sha256 + '  ' + name)} | sha256sum -c --quiet - || "
            f"{{ echo 'dagster-slurm: checksum mismatch for {name}: the upload is corrupt; nothing was unpacked' >&2; "
            "exit 41; }",
        ]
        self_extracting = result.extra.get("self_extracting", name.endswith(".sh"))
        if self_extracting:
            lines += [f"mkdir -p {q(staging)}/.tmp",
                      f"TMPDIR={q(staging)}/.tmp bash {q(name)} --output-directory {q(staging)} --env-name env >/dev/null",
                      f"rm -rf {q(staging)}/.tmp"]
        else:
            configured = self.pixi_unpack_path
            lines += [
                f"unpack={q(configured)}" if configured else
                'unpack=$(command -v pixi-unpack || true); '
                'if [ -z "$unpack" ] && [ -x "$HOME/.pixi/bin/pixi-unpack" ]; then unpack=$HOME/.pixi/bin/pixi-unpack; fi',
                'if [ -z "$unpack" ] || [ ! -x "$unpack" ]; then echo "dagster-slurm: no pixi-unpack on the cluster '
                + (f"at {configured}" if configured else "(not on PATH, not in ~/.pixi/bin)")
                + ' to unpack this .tar environment: install it there (pixi global install pixi-unpack), set '
                'ComputeResource.pixi_unpack_path, or pack with --create-executable" >&2; '
                f"exit {UNPACKER_MISSING}; fi",
                f'"$unpack" {q(name)} --output-directory {q(staging)} --env-name env >/dev/null',
            ]
        return "\n".join(lines)


def artifact_kind(path: Path) -> str:
    """``executable`` (pixi-pack's self-extractor: a script) or ``tar``, from the file's content: pixi-pack
    names a plain tar whatever ``-o`` says (``gpu.sh`` included)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"#!"):
        return "executable"
    if head[257:262] == b"ustar":
        return "tar"
    raise ConfigurationError(f"The pack command's artefact {path} is neither a self-extracting script nor a tar "
                             "archive; check the pack command's --output-file.")
