"""The pixi-pack packer: run the pack command, find its declared artefact, unpack it on the cluster."""

from __future__ import annotations

import shlex
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from collections.abc import Sequence
from pathlib import Path

from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.cache_key import file_sha256, files_for_key, normalise_command
from dagster_slurm.packaging.packer import Log, PackResult, RemoteLayout
from dagster_slurm.packaging.run_local import run_build_command
from dagster_slurm.packaging.upload import upload_with_progress

# Placeholders: {platform} the target platform, {output} the artefact path in a fresh build folder,
# {project} the folder holding pixi.lock.
DEFAULT_PACK_CMD = [
    "pixi-pack", "--environment", "default", "--platform", "{platform}",
    "--create-executable", "--output-file", "{output}", "{project}",
]


def declared_output(cmd: Sequence[str]) -> str | None:
    """The artefact a pixi-pack command says it writes: ``-o``/``--output-file``, or pixi-pack's default.
    With ``--create-executable`` pixi-pack writes a ``.sh`` even when told ``-o x.tar``."""
    args = list(cmd)
    executable = "--create-executable" in args
    for i, arg in enumerate(args):
        value = None
        if arg in ("-o", "--output-file") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--output-file="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return value[: -len(".tar")] + ".sh" if executable and value.endswith(".tar") else value
    if any(Path(a).name.startswith("pixi-pack") or a == "pack" for a in args):
        return "environment.sh" if executable else "environment.tar"
    return None


def pixi_task_command(cmd: Sequence[str], project: Path) -> list[str] | None:
    """For ``pixi run [opts] TASK``: the task's command from pixi.toml / pyproject.toml, if it is a string."""
    args = list(cmd)
    if len(args) < 3 or Path(args[0]).name != "pixi" or args[1] != "run":
        return None
    task = next((a for a in args[2:] if not a.startswith("-")), None)
    for name, section in (("pixi.toml", ("tasks",)), ("pyproject.toml", ("tool", "pixi", "tasks"))):
        path = project / name
        if not path.is_file():
            continue
        table: object = tomllib.loads(path.read_text())
        for part in section:
            table = table.get(part, {}) if isinstance(table, dict) else {}
        value = table.get(task) if isinstance(table, dict) else None
        if isinstance(value, dict):
            value = value.get("cmd")
        if isinstance(value, str):
            return shlex.split(value)
    return None


class PixiPackPacker:
    name = "pixi-pack"

    def __init__(self, pack_cmd: Sequence[str] | str | None, project: Path, platform: str,
                 cache_inject_globs: Sequence[str] | None = None, timeout: float = 3600):
        self.template = normalise_command(pack_cmd) if pack_cmd else list(DEFAULT_PACK_CMD)
        self.project = project
        self.platform = platform
        self.cache_inject_globs = cache_inject_globs
        self.timeout = timeout

    def key_command(self) -> list[str]:
        return self.template

    def key_files(self) -> list[Path]:
        effective = pixi_task_command(self.template, self.project) or self.template
        return files_for_key(effective, self.project, self.cache_inject_globs)

    def command(self, build_dir: Path) -> list[str]:
        values = {"platform": self.platform, "output": str(build_dir / "environment.sh"), "project": str(self.project)}
        return [arg.format(**values) if "{" in arg else arg for arg in self.template]

    def pack(self, build_dir: Path, log: Log) -> PackResult:
        cmd = self.command(build_dir)
        declared = declared_output(cmd) or declared_output(pixi_task_command(cmd, self.project) or [])
        if declared is None:
            raise ConfigurationError(
                f"slurm_pack_cmd / pack_cmd `{' '.join(cmd)}` declares no output. Add `--output-file PATH` "
                "(or `-o PATH`) to the pixi-pack call so dagster-slurm knows which artefact to ship."
            )
        artifact = (self.project / declared).resolve()
        started = time.time()
        log(f"Packing: {' '.join(cmd)}")
        run_build_command(cmd, self.project, "pack command (ComputeResource.pack_cmd / slurm_pack_cmd)",
                          self.timeout)
        if not artifact.is_file() or artifact.stat().st_mtime < started - 1:
            raise ConfigurationError(
                f"The pack command `{' '.join(cmd)}` succeeded but made no artefact at {artifact} (its declared "
                "output). Check its --output-file / -o and that it packs the environment you expect."
            )
        if artifact.suffix not in (".sh", ".tar"):
            raise ConfigurationError(f"Unsupported pixi-pack artefact {artifact.name}: expected .sh or .tar.")
        return PackResult(artifact, file_sha256(artifact), artifact.stat().st_size)

    def upload(self, transport, result: PackResult, layout: RemoteLayout, staging: str, log: Log) -> dict[str, float]:
        upload_with_progress(transport, result.artifact, f"{staging}/.artifact/{result.artifact.name}", log)
        return {"upload_bytes": result.size}

    def install_script(self, result: PackResult, layout: RemoteLayout, staging: str) -> str:
        q = shlex.quote
        name = result.artifact.name
        unpack = (f"bash {q(name)} --output-directory {q(staging)} --env-name env" if name.endswith(".sh")
                  else f"pixi-unpack {q(name)} --output-directory {q(staging)} --env-name env")
        return "\n".join([
            f"cd {q(staging)}/.artifact",
            f"echo {q(result.sha256 + '  ' + name)} | sha256sum -c --quiet - || "
            f"{{ echo 'dagster-slurm: checksum mismatch for {name}: the upload is corrupt; nothing was unpacked' >&2; "
            "exit 41; }",
            unpack + " >/dev/null",
        ])
