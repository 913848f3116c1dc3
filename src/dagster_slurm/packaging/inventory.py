"""What the environment cache on the cluster holds, and what gc may delete. Parsing and planning
are pure; one remote script gathers everything (links, store folders, leases, shared wheels and
tools, build locks, the user's queued and running jobs)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.slurm.parse import active_jobs_script, parse_active

ORPHAN_GRACE_SECONDS = 3600  # an unpublished store folder (or unreferenced wheel) younger than this may be in use
WHEELS_USED = ".dagster-slurm-wheels.txt"
TOOLS_USED = ".dagster-slurm-tools.txt"


def scan_script(layout: RemoteLayout) -> str:
    q = shlex.quote
    return "\n".join([
        f"for l in {q(layout.envs)}/* {q(layout.base)}/deployments/*; do "
        "[ -L \"$l\" ] && printf 'LINK|%s|%s\\n' \"$l\" \"$(readlink \"$l\")\"; done",
        f"for d in {q(layout.store)}/*/; do [ -d \"$d\" ] || continue; d=${{d%/}}; "
        "m=$(stat -c %Y \"$d\"); u=$(stat -c %Y \"$d/.leases\" 2>/dev/null || echo 0); "
        "[ \"$u\" -gt \"$m\" ] && m=$u; "
        "printf 'STORE|%s|%s|%s|%s|%s|%s\\n' \"$d\" \"$m\" "
        "\"$([ -f \"$d/.dagster-slurm-env.json\" ] && echo published)\" "
        "\"$(ls \"$d/.leases\" 2>/dev/null | tr '\\n' ,)\" "
        f"\"$(tr '\\n' , < \"$d/{WHEELS_USED}\" 2>/dev/null)\" \"$(tr '\\n' , < \"$d/{TOOLS_USED}\" 2>/dev/null)\"; "
        "done",
        f"for f in {q(layout.wheels)}/*.whl; do [ -f \"$f\" ] && printf 'WHEEL|%s|%s\\n' \"${{f##*/}}\" "
        "\"$(stat -c %Y \"$f\")\"; done",
        f"for f in {q(layout.tools)}/uv-*; do [ -f \"$f\" ] && printf 'TOOL|%s|%s\\n' \"${{f##*/}}\" "
        "\"$(stat -c %Y \"$f\")\"; done",
        f"printf 'LOCKS|%s\\n' \"$(ls {q(layout.locks)} 2>/dev/null | wc -l)\"",
        # every leased job, whoever submitted it (a shared base holds colleagues' leases too)
        active_jobs_script(f"$(ls {q(layout.store)}/*/.leases 2>/dev/null | grep -E '^[0-9]+(_[0-9]+)?$' | sort -u | paste -sd, -)"),
        "true",
    ])


def _items(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


@dataclass
class Store:
    path: str
    mtime: float
    published: bool
    leases: list[str] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class Inventory:
    stores: dict[str, Store] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # link path -> store path
    wheels: dict[str, float] = field(default_factory=dict)  # wheel file name -> mtime
    tools: dict[str, float] = field(default_factory=dict)
    build_locks: int = 0
    active_jobs: set[str] = field(default_factory=set)
    squeue_error: str | None = None  # squeue could not say which leased jobs are active

    @classmethod
    def parse(cls, text: str) -> Inventory:
        inv = cls()
        for line in text.splitlines():
            kind, _, rest = line.partition("|")
            parts = rest.split("|")
            if kind == "LINK" and len(parts) == 2:
                inv.links[parts[0]] = parts[1].rstrip("/")
            elif kind == "STORE" and len(parts) >= 4:
                parts += [""] * (6 - len(parts))
                inv.stores[parts[0]] = Store(parts[0], float(parts[1] or 0), parts[2] == "published",
                                             _items(parts[3]), _items(parts[4]), _items(parts[5]))
            elif kind in ("WHEEL", "TOOL") and len(parts) == 2:
                (inv.wheels if kind == "WHEEL" else inv.tools)[parts[0]] = float(parts[1] or 0)
            elif kind == "LOCKS":
                inv.build_locks = int(rest.strip() or 0)
            elif kind == "ACTIVE":
                inv.active_jobs, inv.squeue_error = parse_active(rest)
        return inv

    def links_to(self, store_path: str) -> list[str]:
        return [link for link, target in self.links.items() if target == store_path]

    def names_for(self, store_path: str) -> list[str]:
        return [link.rsplit("/", 2)[-2] + "/" + link.rsplit("/", 1)[-1] for link in self.links_to(store_path)]

    def active_leases(self, store: Store) -> list[str]:
        return [j for j in store.leases if j in self.active_jobs]

    def is_deployment(self, store: Store) -> bool:
        return any("/deployments/" in link for link in self.links_to(store.path))


@dataclass
class GcPlan:
    stores: list[Store]
    wheels: list[str]  # shared wheels no remaining environment was built from
    tools: list[str]
    stale_leases: list[str]  # lease files (paths) of jobs that are no longer queued or running


def parse_duration_spec(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"--older-than {text!r}: use a number with s, m, h, d or w (e.g. 7d).")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def plan_gc(inv: Inventory, *, keep: int, older_than: float, now: float) -> GcPlan:
    """What to delete. Never a store folder that a queued or running job leases, a deployment, one
    of the ``keep`` most recent published ones, or one younger than ``older_than``; an unpublished
    (half-built) folder goes once it is older than an hour. Shared wheels and uv binaries go when no
    remaining environment was built from them, they are older than an hour, and no build is running."""
    published = sorted((s for s in inv.stores.values() if s.published), key=lambda s: -s.mtime)
    protected = {s.path for s in published[:keep]}
    doomed = []
    for store in inv.stores.values():
        if inv.active_leases(store) or inv.is_deployment(store) or store.path in protected:
            continue
        age = now - store.mtime
        if (not store.published and age > ORPHAN_GRACE_SECONDS) or (store.published and age > older_than):
            doomed.append(store)
    kept = [s for s in inv.stores.values() if s not in doomed]
    wheels: list[str] = []
    tools: list[str] = []
    if inv.build_locks == 0:
        used_wheels = {w for s in kept for w in s.wheels}
        used_tools = {t for s in kept for t in s.tools}
        wheels = sorted(w for w, m in inv.wheels.items() if w not in used_wheels and now - m > ORPHAN_GRACE_SECONDS)
        tools = sorted(t for t, m in inv.tools.items() if t not in used_tools and now - m > ORPHAN_GRACE_SECONDS)
    stale = [f"{s.path}/.leases/{j}" for s in kept for j in s.leases if j not in inv.active_jobs]
    return GcPlan(sorted(doomed, key=lambda s: s.path), wheels, tools, stale)
