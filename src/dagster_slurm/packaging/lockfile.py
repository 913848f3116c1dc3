"""Find the project's lock file and with it the packer to use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dagster_slurm.errors import ConfigurationError

PackerKind = Literal["pixi", "uv"]
LOCK_NAMES: dict[str, PackerKind] = {"pixi.lock": "pixi", "uv.lock": "uv"}


@dataclass(frozen=True)
class Lockfile:
    path: Path
    kind: PackerKind

    @property
    def project_dir(self) -> Path:
        return self.path.parent


def find_lockfile(start: str | Path | None = None, explicit: str | Path | None = None) -> Lockfile:
    """The explicit ``lockfile`` if given, else the nearest ``pixi.lock`` or ``uv.lock`` from ``start``
    (default: the working directory) upwards. A folder holding both prefers pixi.lock."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_file():
            raise ConfigurationError(f"ComputeResource.lockfile: no lock file at {path}. Point it at a pixi.lock "
                                     "or uv.lock (create one with `pixi lock` or `uv lock`).")
        kind = LOCK_NAMES.get(path.name)
        if kind is None:
            kind = "pixi" if path.read_text(errors="replace").lstrip().startswith("version:") else "uv"
        return Lockfile(path, kind)
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name, kind in LOCK_NAMES.items():
            if (folder / name).is_file():
                return Lockfile(folder / name, kind)
    raise ConfigurationError(
        f"No pixi.lock or uv.lock found in {here} or any parent folder, so there is no environment to pack. "
        "Run `pixi lock` or `uv lock` in your project, set ComputeResource.lockfile, or use a pre-deployed "
        "environment (ComputeResource.pre_deployed_env_path)."
    )
