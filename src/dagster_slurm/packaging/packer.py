"""What every packer provides: a key, a local pack step, uploads and a remote install script."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dagster_slurm.transport.base import Transport

Log = Callable[[str], None]


@dataclass
class PackResult:
    """What a local pack produced."""

    artifact: Path  # the main artefact (environment.sh / environment.tar / requirements.txt)
    sha256: str
    size: int
    extra: dict = field(default_factory=dict)  # packer-specific (e.g. wheels)


@dataclass
class RemoteLayout:
    """Where things live under the deployment base path on the cluster."""

    base: str

    @property
    def envs(self) -> str:
        return f"{self.base}/envs"

    @property
    def store(self) -> str:
        return f"{self.base}/envs/.store"

    @property
    def locks(self) -> str:
        return f"{self.base}/envs/.locks"

    @property
    def wheels(self) -> str:
        return f"{self.base}/wheels"

    @property
    def tools(self) -> str:
        return f"{self.base}/tools"

    def env(self, key: str) -> str:
        return f"{self.envs}/{key}"


class Packer(Protocol):
    name: str
    platform: str

    def key_command(self) -> list[str]:
        """The normalised command (or recipe) that goes into the cache key."""

    def key_files(self) -> list[Path]:
        """Local files whose contents go into the cache key (injected packages)."""

    def pack(self, build_dir: Path, log: Log) -> PackResult:
        """Build the artefact(s) locally in ``build_dir``."""

    def upload(self, transport: Transport, result: PackResult, layout: RemoteLayout, staging: str,
               log: Log) -> dict[str, float]:
        """Upload what the cluster lacks into ``staging`` (or a shared store). Returns figures."""

    def install_script(self, result: PackResult, layout: RemoteLayout, staging: str) -> str:
        """Shell that verifies checksums and unpacks into ``staging`` (activate.sh + env/)."""
