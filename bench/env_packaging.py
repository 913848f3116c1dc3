"""Packaging benchmark: the uv packer's cold deploy, warm-run overhead, incremental uploads, concurrency.

    .venv/bin/python bench/env_packaging.py [--runs 3] [--parts 1,2,3,4] [--concurrency 8]

One invocation measures, each library run in a fresh Python process, every measurement on a fresh
remote deployment base (``~/dagster-slurm-bench/pk-<id>``, removed afterwards) and, where "cold" is
claimed, a fresh local cache (``DAGSTER_SLURM_CACHE`` pointed at an empty temporary folder):

1. cold deploy of the example environment (``examples/uv.lock``) and of a bigger one (dagster-pipes +
   numpy + pandas + pyarrow) through ``ensure_environment``, against doing it by hand: ``uv export``,
   upload the static uv binary + requirements, ``uv venv`` + ``uv pip install -r`` from the index on
   the cluster (fresh ``UV_CACHE_DIR``);
2. a full Dagster step with the environment cached (``lockfile=``) against ``pre_deployed_env_path=``
   the same folder, interleaved;
3. bytes uploaded for a one-dependency change (six 1.16.0 -> 1.17.0; pyarrow 26.0.0 -> 26.0.1 in the
   big lock) against the cold upload;
4. N concurrent cold runs (one machine / shared local cache, and N "machines" with a local cache each)
   against a single cold run.

Medians go to stdout as markdown, progress to stderr, raw figures to bench/results/packaging.json.
See bench/README.md. Needs the test cluster of scripts/testcluster.sh (started if it is not running).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import load_cluster_env, med, src_fingerprint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAYLOAD = HERE / "payload.py"
RESULTS = HERE / "results" / "packaging.json"
EXAMPLE_LOCK = ROOT / "examples" / "uv.lock"
BENCH_BASE = "dagster-slurm-bench"  # relative to the remote home
PY = "3.11"  # the cluster's python3 (checked at start)
PLATFORM = "linux-64"
REMOTE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BIG_PYPROJECT = """\
[project]
name = "bench-big-env"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["dagster-pipes>=1.13,<1.14", "numpy==2.4.6", "pandas==3.1.1", "pyarrow=={pyarrow}"]

[tool.uv]
package = false
"""
BIG_IMPORTS = "import dagster_pipes, numpy, pandas, pyarrow"
SMALL_IMPORTS = "import dagster_pipes"


# =============================================================================================== children
def _stats(transport, before) -> dict:
    s = transport.stats.since(before)
    return {"connections": s.connections, "channels": s.channels, "commands": s.commands, "sftp_ops": s.sftp_ops,
            "bytes_uploaded": s.bytes_uploaded, "command_log": [c[:200] for c in s.command_log]}


def child_ensure(t_proc: float, base: str, lock: str, out: str, go_file: str | None = None) -> None:
    """ensure_environment of LOCK under BASE, as the library does it on a run (library defaults)."""
    rec: dict = {"t_proc": t_proc, "t_imported": time.time(), "cache": os.environ.get("DAGSTER_SLURM_CACHE"),
                 "messages": [], "phases": {}}
    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.agent import transport_for as get_transport
    from dagster_slurm.packaging.cache import ensure_environment
    from dagster_slurm.packaging.cache_key import compute_cache_key
    from dagster_slurm.packaging.packer import RemoteLayout
    from dagster_slurm.packaging.uv_packer import UvPacker

    rec["t_imported"] = time.time()
    phases = rec["phases"]

    class TimedUvPacker(UvPacker):  # times the pack's sub-steps; behaviour unchanged
        def _download_wheels(self, pins, build_dir, log):
            t0 = time.monotonic()
            try:
                return super()._download_wheels(pins, build_dir, log)
            finally:
                phases["download_wheels"] = time.monotonic() - t0
                phases["pins"] = len(pins)

        def _uv_binary(self, log):
            t0 = time.monotonic()
            try:
                return super()._uv_binary(log)
            finally:
                phases["uv_binary"] = time.monotonic() - t0

    lock_path = Path(lock)
    transport = get_transport(SSHConnectionResource.from_env(
        known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"]).settings())
    t0 = time.time()
    transport.home()  # connect (SFTP realpath) outside the ensure figure
    rec["connect"] = time.time() - t0
    before = transport.stats.snapshot()
    packer = TimedUvPacker(lock_path, PLATFORM, PY, "python3")
    key = compute_cache_key(lock_path.read_bytes(), packer.key_command(), packer.platform, packer.key_files())
    if go_file:  # wait for the others (see Bench.ensure_many)
        Path(f"{go_file}.ready-{os.getpid()}").touch()
        while not os.path.exists(go_file):
            time.sleep(0.002)
    rec["t_ensure_start"] = time.time()
    result = ensure_environment(transport, RemoteLayout(base), packer, key,
                                log=lambda m: rec["messages"].append([round(time.time() - rec["t_ensure_start"], 3), m]))
    rec["t_ensure_end"] = time.time()
    rec.update(ensure=rec["t_ensure_end"] - rec["t_ensure_start"], hit=result.cache_hit, path=result.path,
               key=result.key, figures=result.figures, stats=_stats(transport, before))
    Path(out).write_text(json.dumps(rec))


def _instrument(transport, ops: list) -> None:
    """Timestamp every remote command and SFTP operation of this process (no extra remote traffic)."""
    orig_run, orig_file_op = transport.run, transport._file_op

    def run(command, **kw):
        t0 = time.time()
        try:
            return orig_run(command, **kw)
        finally:
            ops.append({"kind": "cmd", "t0": t0, "t1": time.time(), "what": command[:160]})

    def file_op(what, path, op, timeout=None):
        t0 = time.time()
        try:
            return orig_file_op(what, path, op, timeout)
        finally:
            ops.append({"kind": "sftp", "t0": t0, "t1": time.time(), "what": f"{what} {path}"[:160]})

    transport.run, transport._file_op = run, file_op


def child_dagster(variant: str, t_proc: float, base: str, lock: str, env_path: str, out: str) -> None:
    """One trivial asset in slurm mode: packed from LOCK (cached or not) or pre_deployed_env_path=ENV_PATH."""
    import dagster as dg
    from dagster import DagsterInstance

    from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource
    from dagster_slurm.agent import transport_for as get_transport

    rec: dict = {"t_proc": t_proc, "t_imported": time.time()}
    payload = str(PAYLOAD)

    @dg.asset
    def trivial(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload).get_results()

    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=base, queue=SlurmQueueConfig(cpus=1, mem="256M"))
    if variant == "predeployed":
        compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=env_path)
    elif variant == "packed_pinned":  # python_version given: no remote interpreter probe
        compute = ComputeResource(mode="slurm", slurm=slurm, lockfile=lock, python_version=PY)
    else:
        compute = ComputeResource(mode="slurm", slurm=slurm, lockfile=lock)
    transport = get_transport(ssh.settings())  # the pooled instance the resource will use
    _instrument(transport, rec.setdefault("ops", []))
    before = transport.stats.snapshot()
    instance = DagsterInstance.ephemeral()
    result = dg.materialize([trivial], resources={"compute": compute}, instance=instance, raise_on_error=False)
    rec["success"] = result.success
    ev: dict = {"metadata": {}}
    for entry in instance.all_logs(result.run_id):
        if entry.dagster_event is None:
            continue
        name = entry.dagster_event.event_type_value
        ev.setdefault(name, entry.timestamp)
        if name == "ASSET_MATERIALIZATION":
            for k, v in entry.dagster_event.event_specific_data.materialization.metadata.items():
                ev["metadata"][k] = getattr(v, "value", str(v))
        if name == "STEP_FAILURE":
            ev["failure"] = str(entry.dagster_event.event_specific_data.error)[-3000:]
    rec["events"] = ev
    rec["stats"] = _stats(transport, before)
    rec["t_done"] = time.time()
    Path(out).write_text(json.dumps(rec, default=str))


# =============================================================================================== parent
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_s(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f} s"


def fmt_mb(v):
    return "-" if v is None else (f"{v / 1e6:.1f} MB" if v >= 1e5 else f"{v / 1e3:.1f} kB")


def fmt_n(v):
    return "-" if v is None else (f"{v:g}" if isinstance(v, (int, float)) else str(v))


class Bench:
    def __init__(self, admin, tmp: Path):
        self.admin = admin
        self.tmp = tmp
        self.root = admin.absolute(BENCH_BASE)
        self.bases: list[str] = []

    # -- remote bases and local caches
    def new_base(self) -> str:
        base = f"{self.root}/pk-{uuid.uuid4().hex[:8]}"
        self.bases.append(base)
        return base

    def drop_base(self, base: str) -> None:
        self.admin.run(f"rm -rf -- {shlex.quote(base)}", check=False, timeout=600)

    def new_cache(self) -> Path:
        path = self.tmp / f"cache-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def du(self, base: str, names: list[str]) -> dict:
        """Apparent size of each folder under BASE, and of all together (hard links counted once)."""
        q = shlex.quote
        parts = " ".join(q(f"{base}/{n}") for n in names)
        out = self.admin.run(f"cd {q(base)} && for d in {' '.join(q(n) for n in names)}; do "
                             f"[ -e \"$d\" ] && du -sb \"$d\"; done; du -sbc {parts} 2>/dev/null | tail -1; "
                             f"find {parts} 2>/dev/null | wc -l", check=False).stdout.split("\n")
        sizes: dict = {}
        for line in out:
            f = line.split()
            if len(f) == 2 and f[0].isdigit():
                sizes["total_hardlinks_once" if f[1] == "total" else f[1]] = int(f[0])
            elif len(f) == 1 and f[0].isdigit():
                sizes["files_and_dirs"] = int(f[0])
        return sizes

    def gc(self, base: str) -> str:
        """`dagster-slurm env gc --keep 1 --older-than 0s` on BASE: what a user runs to free the cluster's disk."""
        env = {**os.environ, "SLURM_DEPLOYMENT_BASE_PATH": base,
               "SLURM_EDGE_NODE_KNOWN_HOSTS": os.environ["TESTCLUSTER_KNOWN_HOSTS"]}
        r = subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "env", "gc", "--keep", "1",
                            "--older-than", "0s"], env=env, capture_output=True, text=True, cwd=str(ROOT), check=False)
        return (r.stdout + r.stderr).strip()[-500:]

    def verify(self, env_path: str, imports: str) -> bool:
        r = self.admin.run(f". {shlex.quote(env_path)}/activate.sh && python -c {shlex.quote(imports)}",
                           check=False, timeout=300)
        if r.exit_status != 0:
            log(f"  !! {env_path} does not import: {r.stderr[-500:]}")
        return r.exit_status == 0

    # -- children
    def _child_env(self, cache: Path | None) -> dict:
        env = dict(os.environ)
        # pip (the uv packer downloads wheels with `pip download`) reads only PyPI, like the by-hand baseline:
        # this machine's pip config adds a local file mirror and find-links, which no user machine has.
        env["PIP_CONFIG_FILE"] = os.devnull
        env.pop("PIP_FIND_LINKS", None)
        if cache is not None:
            env["DAGSTER_SLURM_CACHE"] = str(cache)
        return env

    def _read(self, out: str, log_file: str, rc: int, what: str) -> dict:
        if rc != 0 or not os.path.exists(out):
            raise RuntimeError(f"{what} child failed (exit {rc}); see {log_file}:\n" + Path(log_file).read_text()[-3000:])
        return json.loads(Path(out).read_text())

    def ensure(self, base: str, lock: Path, cache: Path) -> dict:
        """One ensure child; wall measured here around the process."""
        return self.ensure_many(base, lock, [cache])[0]

    def ensure_many(self, base: str, lock: Path, caches: list[Path], barrier: bool = False) -> list[dict]:
        """Start one ensure child per cache, all at once; wait for all. Wall of each measured here.

        With ``barrier`` the children import and connect, then wait until all are ready and call
        ensure_environment together (so Python/Dagster start-up on a busy machine does not stagger them)."""
        procs = []
        go = self.tmp / f"go-{uuid.uuid4().hex[:8]}"
        t_start = time.perf_counter()
        for cache in caches:
            out = str(self.tmp / f"ensure-{uuid.uuid4().hex}.json")
            log_file = str(self.tmp / f"ensure-{uuid.uuid4().hex[:8]}.log")
            fh = open(log_file, "wb")
            t_proc = time.time()
            p = subprocess.Popen([sys.executable, __file__, "--child", "ensure", "--t-proc", repr(t_proc),
                                  "--base", base, "--lock", str(lock), "--out", out]
                                 + (["--go-file", str(go)] if barrier else []),
                                 stdout=fh, stderr=fh, cwd=str(ROOT), env=self._child_env(cache))
            procs.append((p, out, log_file, fh, time.perf_counter()))
        t_go = None
        if barrier:
            deadline = time.monotonic() + 300
            while sum(1 for _ in self.tmp.glob(f"{go.name}.ready-*")) < len(procs):
                if time.monotonic() > deadline or any(p.poll() is not None for p, *_ in procs):
                    break
                time.sleep(0.005)
            t_go = time.time()
            go.touch()
        recs = []
        for p, out, log_file, fh, p0 in procs:
            rc = p.wait()
            wall = time.perf_counter() - p0
            fh.close()
            rec = self._read(out, log_file, rc, "ensure")
            rec["wall"] = wall
            recs.append(rec)
        all_wall = time.perf_counter() - t_start
        for rec in recs:
            rec["wall_all"] = all_wall
            rec["t_go"] = t_go
        return recs

    def dagster(self, variant: str, base: str, lock: Path, env_path: str, cache: Path) -> dict:
        out = str(self.tmp / f"dagster-{uuid.uuid4().hex}.json")
        log_file = str(self.tmp / f"dagster-{variant}.log")
        with open(log_file, "ab") as fh:
            t_proc = time.time()
            p0 = time.perf_counter()
            rc = subprocess.call([sys.executable, __file__, "--child", "dagster", "--variant", variant,
                                  "--t-proc", repr(t_proc), "--base", base, "--lock", str(lock),
                                  "--env-path", env_path or "", "--out", out],
                                 stdout=fh, stderr=fh, cwd=str(ROOT), env=self._child_env(cache))
            wall = time.perf_counter() - p0
        rec = self._read(out, log_file, rc, f"dagster {variant}")
        if not rec.get("success"):
            raise RuntimeError(f"dagster {variant} run failed: {rec['events'].get('failure')}")
        ev = rec["events"]
        log_cmds = rec["stats"]["command_log"]
        sb = next((i for i, c in enumerate(log_cmds) if "sbatch" in c), None)
        ops = rec["ops"]
        t_sb = next((o["t0"] for o in ops if o["kind"] == "cmd" and "sbatch" in o["what"]), None)
        before_sb = [o for o in ops if t_sb is not None and o["t0"] < t_sb]
        return {"variant": variant, "wall": wall, "step": ev["STEP_SUCCESS"] - ev["STEP_START"],
                "start_to_sbatch": None if t_sb is None else t_sb - ev["STEP_START"],
                "sftp_before_sbatch": sum(o["kind"] == "sftp" for o in before_sb),
                "ops_before_sbatch": [f"{o['kind']} {o['t1'] - o['t0']:.3f}s {o['what'][:90]}" for o in before_sb],
                "commands": rec["stats"]["commands"], "sftp_ops": rec["stats"]["sftp_ops"],
                "connections": rec["stats"]["connections"], "channels": rec["stats"]["channels"],
                "bytes_uploaded": rec["stats"]["bytes_uploaded"], "commands_before_sbatch": sb,
                "cache_hit": ev["metadata"].get("slurm_env_cache_hit"),
                "env": ev["metadata"].get("slurm_environment"), "raw": rec}

    # -- the by-hand baseline
    def baseline(self, lock: Path, imports: str) -> dict:
        """What a user does by hand: export requirements, ship uv, venv + uv pip install from the index."""
        from dagster_slurm.packaging.uv_packer import UvPacker, uv_bin

        uv_local = UvPacker(lock, PLATFORM, PY)._uv_binary(log)  # the library's cached static uv
        base = self.new_base()
        q = shlex.quote
        rec: dict = {"base": base}
        req = self.tmp / f"req-{uuid.uuid4().hex[:8]}.txt"
        t0 = time.perf_counter()
        subprocess.run([uv_bin(), "export", "--frozen", "--no-dev", "--no-emit-project", "--quiet",
                        "--project", str(lock.parent), "-o", str(req)], check=True)
        rec["export"] = time.perf_counter() - t0
        before = self.admin.stats.snapshot()
        t0 = time.perf_counter()
        self.admin.mkdir_p(base)
        self.admin.put_file(str(uv_local), f"{base}/uv")
        self.admin.put_file(str(req), f"{base}/requirements.txt")
        self.admin.run(f"chmod +x {q(base)}/uv")
        rec["upload"] = time.perf_counter() - t0
        rec["upload_bytes"] = self.admin.stats.since(before).bytes_uploaded
        t0 = time.perf_counter()
        r = self.admin.run(
            f"cd {q(base)} && export UV_CACHE_DIR={q(base)}/uv-cache UV_NO_PROGRESS=1 UV_PYTHON_DOWNLOADS=never "
            # the network here goes through a TLS proxy whose CA is only in the system bundle (uv's static
            # build ships its own roots); harmless on a cluster with plain internet access
            f"SSL_CERT_FILE={q(REMOTE_CA_BUNDLE)} && "
            f"./uv venv --quiet --python python3 venv && "
            f"./uv pip install --quiet --python venv/bin/python -r requirements.txt", check=False, timeout=3600)
        rec["install"] = time.perf_counter() - t0
        if r.exit_status != 0:
            raise RuntimeError(f"baseline install failed: {r.stderr[-2000:]}")
        rec["total"] = rec["export"] + rec["upload"] + rec["install"]
        self.admin.write_bytes(f"{base}/activate.sh", f"export PATH={q(base)}/venv/bin:\"$PATH\"\n".encode())
        rec["verified"] = self.verify(base, imports)
        rec["disk"] = self.du(base, ["venv", "uv-cache", "uv"])
        self.drop_base(base)
        return rec


def make_big_project(folder: Path, pyarrow: str) -> Path:
    from uv import find_uv_bin

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(BIG_PYPROJECT.format(pyarrow=pyarrow))
    subprocess.run([find_uv_bin(), "lock", "--quiet", "--project", str(folder)], check=True, timeout=300)
    return folder / "uv.lock"


def summarize_ensure(rec: dict) -> dict:
    f = rec.get("figures") or {}
    ph = rec.get("phases") or {}
    out = {"wall": rec["wall"], "ensure": rec["ensure"], "hit": rec["hit"], "import": rec["t_imported"] - rec["t_proc"],
           "connect": rec["connect"], "pack": f.get("pack_seconds"), "upload": f.get("upload_seconds"),
           "unpack": f.get("unpack_seconds"), "artifact_bytes": f.get("artifact_bytes"),
           "upload_bytes": f.get("upload_bytes"), "bytes_uploaded_transport": rec["stats"]["bytes_uploaded"],
           "wheels_uploaded": f.get("wheels_uploaded"), "wheels_reused": f.get("wheels_reused"),
           "download_wheels": ph.get("download_wheels"), "uv_binary": ph.get("uv_binary"),
           "commands": rec["stats"]["commands"], "sftp_ops": rec["stats"]["sftp_ops"]}
    if out["pack"] is not None:
        out["pack_export_compile"] = out["pack"] - (out["download_wheels"] or 0) - (out["uv_binary"] or 0)
    return out


def part1_and_3(b: Bench, locks: dict, warm_cache: Path, runs: int, results: dict) -> None:
    p1 = results.setdefault("cold", {name: {"lib_cold": [], "lib_remote_cold": [], "baseline": []} for name in
                                     ("example", "big")})
    p3 = results.setdefault("one_dep_change", {"big_pyarrow": [], "small_six": []})
    for rnd in range(runs):
        for name, imports in (("example", SMALL_IMPORTS), ("big", BIG_IMPORTS)):
            lock = locks[name]
            variants = ["lib_cold", "lib_remote_cold", "baseline"]
            variants = variants[rnd % 3:] + variants[:rnd % 3]
            for v in variants:
                if v == "baseline":
                    r = b.baseline(lock, imports)
                    log(f"round {rnd} {name:7s} baseline        total {r['total']:.1f} s (export {r['export']:.2f}, "
                        f"upload {r['upload']:.2f}, venv+install {r['install']:.1f}) ok={r['verified']}")
                    p1[name][v].append(r)
                    continue
                base = b.new_base()
                cache = b.new_cache() if v == "lib_cold" else warm_cache
                raw = b.ensure(base, lock, cache)
                s = summarize_ensure(raw)
                s["verified"] = b.verify(raw["path"], imports)
                s["disk"] = b.du(base, ["wheels", "tools", ".uv-cache", "envs"])
                s["raw"] = raw
                log(f"round {rnd} {name:7s} {v:15s} wall {s['wall']:.1f} s ensure {s['ensure']:.1f} s (pack "
                    f"{s['pack']:.1f} [wheels {s['download_wheels'] or 0:.1f}, uv {s['uv_binary'] or 0:.1f}], upload "
                    f"{s['upload']:.2f}, unpack {s['unpack']:.1f}) {fmt_mb(s['upload_bytes'])} ok={s['verified']}")
                p1[name][v].append(s)
                if name == "big" and v == "lib_cold":  # part 3 on the same base: bump pyarrow
                    raw2 = b.ensure(base, locks["big_bumped"], cache)
                    s2 = summarize_ensure(raw2)
                    s2["verified"] = b.verify(raw2["path"], BIG_IMPORTS)
                    s2["cold_upload_bytes"] = s["upload_bytes"]
                    s2["store_dirs"] = len(b.admin.listdir(f"{base}/envs/.store") or [])
                    s2["disk_after"] = b.du(base, ["wheels", "tools", ".uv-cache", "envs"])
                    s2["gc"] = b.gc(base)
                    s2["disk_after_gc"] = b.du(base, ["wheels", "tools", ".uv-cache", "envs"])
                    s2["raw"] = raw2
                    p3["big_pyarrow"].append(s2)
                    log(f"round {rnd} big     pyarrow bump    ensure {s2['ensure']:.1f} s, {s2['wheels_uploaded']} of "
                        f"{s2['wheels_uploaded'] + s2['wheels_reused']} wheels, {fmt_mb(s2['upload_bytes'])} "
                        f"(cold {fmt_mb(s['upload_bytes'])})")
                b.drop_base(base)
                if v == "lib_cold":
                    shutil.rmtree(cache, ignore_errors=True)
        # part 3, small: six 1.16.0 -> 1.17.0 (make_uv_project), warm local cache, fresh remote base
        base = b.new_base()
        first = summarize_ensure(b.ensure(base, locks["six_a"], warm_cache))
        raw2 = b.ensure(base, locks["six_b"], warm_cache)
        s2 = summarize_ensure(raw2)
        s2["verified"] = b.verify(raw2["path"], "import six, dagster_pipes; assert six.__version__ == '1.17.0'")
        s2.update(cold_upload_bytes=first["upload_bytes"], cold_wheels_uploaded=first["wheels_uploaded"],
                  store_dirs=len(b.admin.listdir(f"{base}/envs/.store") or []), raw=raw2)
        p3["small_six"].append(s2)
        log(f"round {rnd} six bump                ensure {s2['ensure']:.1f} s, {s2['wheels_uploaded']} of "
            f"{s2['wheels_uploaded'] + s2['wheels_reused']} wheels, {fmt_mb(s2['upload_bytes'])} "
            f"(cold {fmt_mb(first['upload_bytes'])})")
        b.drop_base(base)


WARM_VARIANTS = ["packed", "packed_pinned", "predeployed"]


def part2(b: Bench, lock: Path, warm_cache: Path, runs: int, jitter: float, results: dict) -> None:
    import random

    rng = random.Random(1)
    base = b.new_base()
    cold = b.dagster("packed", base, lock, "", warm_cache)
    env_path = cold["env"]
    log(f"warm-vs-pre: first (cold remote) packed run step {cold['step']:.2f} s, env {env_path}")
    out: dict = {"cold_first_run": cold, "env_path": env_path, **{v: [] for v in WARM_VARIANTS}}
    for rnd in range(runs + 1):  # round 0 is a warm-up (discarded)
        k = rnd % len(WARM_VARIANTS)
        for v in WARM_VARIANTS[k:] + WARM_VARIANTS[:k]:
            time.sleep(rng.uniform(0, jitter))  # slurmctld's ~1 s scheduling tick: do not fix a variant's phase
            r = b.dagster(v, base, lock, env_path, warm_cache)
            r["round"] = rnd
            if rnd > 0:
                out[v].append(r)
            log(f"round {rnd}{' (warmup)' if rnd == 0 else ''} {v:13s} step {r['step']:.3f} s (start->sbatch "
                f"{r['start_to_sbatch']:.3f} s) wall {r['wall']:.2f} s commands {r['commands']} sftp {r['sftp_ops']} "
                f"hit={r['cache_hit']}")
    results["warm_vs_predeployed"] = out
    b.drop_base(base)


def part4(b: Bench, locks: dict, n: int, runs: int, results: dict) -> None:
    out = results.setdefault("concurrent", {})
    for rnd in range(runs):
        for name, imports in (("example", SMALL_IMPORTS), ("big", BIG_IMPORTS)):
            for mode in ("shared_cache", "own_caches"):
                base = b.new_base()
                shared = b.new_cache()
                caches = [shared] * n if mode == "shared_cache" else [b.new_cache() for _ in range(n)]
                recs = b.ensure_many(base, locks[name], caches, barrier=True)
                store = b.admin.listdir(f"{base}/envs/.store") or []
                wheels = [w for w in (b.admin.listdir(f"{base}/wheels") or [])]
                builder_end = max((r["t_ensure_end"] for r in recs if not r["hit"]), default=None)
                t_go = recs[0]["t_go"]
                s = {"round": rnd, "wall_all": recs[0]["wall_all"], "span": max(r["t_ensure_end"] for r in recs) - t_go,
                     "start_spread": max(r["t_ensure_start"] for r in recs) - t_go, "miss": sum(not r["hit"] for r in recs),
                     "hit": sum(r["hit"] for r in recs), "paths": len({r["path"] for r in recs}),
                     "store_dirs": len(store), "wheel_files": len(wheels),
                     "part_files": sum(".part-" in w for w in wheels),
                     "locks_left": len(b.admin.listdir(f"{base}/envs/.locks") or []),
                     "bytes_uploaded_total": sum(r["stats"]["bytes_uploaded"] for r in recs),
                     "waiter_sftp_ops": sum(r["stats"]["sftp_ops"] for r in recs if r["hit"]),
                     "waiter_commands": sum(r["stats"]["commands"] for r in recs if r["hit"]),
                     "wheels_uploaded_total": sum((r.get("figures") or {}).get("wheels_uploaded", 0) for r in recs),
                     "pack_calls": sum(1 for r in recs if (r.get("figures") or {}).get("pack_seconds") is not None),
                     "local_downloads": sum(1 for r in recs if "download_wheels" in r["phases"]
                                            and any("Downloading" in m for _, m in r["messages"])),
                     "stale_lock_breaks": sum(1 for r in recs for _, m in r["messages"] if "Breaking stale" in m),
                     "import_median": med([r["t_imported"] - r["t_proc"] for r in recs]),
                     "last_hit_after_publish": (max(r["t_ensure_end"] for r in recs) - builder_end)
                     if builder_end else None,
                     "verified": b.verify(recs[0]["path"], imports),
                     "raw": [{k: r[k] for k in ("hit", "wall", "ensure", "t_proc", "t_imported", "t_ensure_start",
                                                "t_ensure_end", "messages", "figures", "phases")} for r in recs]}
                out.setdefault(f"{name}/{mode}", []).append(s)
                log(f"round {rnd} {name:7s} {n} concurrent ({mode}): after common start {s['span']:.1f} s (all processes "
                    f"{s['wall_all']:.1f} s), MISS {s['miss']} "
                    f"HIT {s['hit']}, store dirs {s['store_dirs']}, uploads {fmt_mb(s['bytes_uploaded_total'])}, "
                    f"last HIT {fmt_s(s['last_hit_after_publish'], 2)} after publish")
                b.drop_base(base)
                for c in set(caches):
                    shutil.rmtree(c, ignore_errors=True)


def render(results: dict, args, source: dict) -> str:
    L = [f"Library at {source['git_head']}{' + uncommitted src changes' if source['src_dirty'] else ''} "
         f"(src hash {source['src_hash_start']}"
         + ("" if source["src_hash_end"] == source["src_hash_start"] else " -> CHANGED DURING THE RUN") + "). "
         f"Medians of {args.runs} run(s). Cluster = this machine over loopback SSH (upload rates are not a "
         "network's; bytes are)."]
    cold = results.get("cold")
    if cold:
        L += ["", "### 1. Cold deploy: ensure_environment vs `uv pip install` by hand on the cluster", "",
              "| lock | variant | wall (process) | deploy | pack (wheels dl / uv dl / export+compile) | upload "
              "| unpack / install | bytes uploaded | remote disk (hardlinks once) |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("example", "big"):
            for v, label in (("lib_cold", "library, cold local + remote"),
                             ("lib_remote_cold", "library, warm local cache, cold remote"),
                             ("baseline", "by hand: export, ship uv, uv pip install from index")):
                rs = cold[name][v]
                if not rs:
                    continue
                disk = med([r["disk"].get("total_hardlinks_once") for r in rs])
                if v == "baseline":
                    L.append(f"| {name} | {label} | - | {fmt_s(med([r['total'] for r in rs]))} | export "
                             f"{fmt_s(med([r['export'] for r in rs]), 2)} | {fmt_s(med([r['upload'] for r in rs]), 2)} | "
                             f"{fmt_s(med([r['install'] for r in rs]))} | {fmt_mb(med([r['upload_bytes'] for r in rs]))} "
                             f"(+ wheels from the index) | {fmt_mb(disk)} |")
                else:
                    L.append(f"| {name} | {label} | {fmt_s(med([r['wall'] for r in rs]))} | "
                             f"{fmt_s(med([r['ensure'] for r in rs]))} | {fmt_s(med([r['pack'] for r in rs]))} "
                             f"({fmt_s(med([r['download_wheels'] for r in rs]))} / {fmt_s(med([r['uv_binary'] for r in rs]), 2)}"
                             f" / {fmt_s(med([r['pack_export_compile'] for r in rs]), 2)}) | "
                             f"{fmt_s(med([r['upload'] for r in rs]), 2)} | {fmt_s(med([r['unpack'] for r in rs]))} | "
                             f"{fmt_mb(med([r['upload_bytes'] for r in rs]))} ({fmt_n(med([r['wheels_uploaded'] for r in rs]))}"
                             f" wheels + uv) | {fmt_mb(disk)} |")
        L += ["", "Deploy = the ensure_environment call (library; the process wall adds Python+Dagster import and "
              "the SSH connect) or export + upload + install (by hand). The by-hand baseline starts with uv already "
              "on this machine, like the 'warm local cache' row. Remote disk: library = wheels/ + tools/ + "
              ".uv-cache/ + envs/; by hand = venv/ + uv-cache/ + uv."]
    w = results.get("warm_vs_predeployed")
    if w:
        n = len(w["packed"])
        L += ["", f"### 2. Warm run (cache hit) vs pre-deployed environment: one trivial asset ({n} interleaved rounds)", "",
              "| variant | step (STEP_START -> STEP_SUCCESS) | STEP_START -> sbatch sent | wall | remote commands (before "
              "sbatch) | SFTP ops (before sbatch) | bytes uploaded |", "|---|---|---|---|---|---|---|"]
        rows = [("ComputeResource(lockfile=...), cache hit", w["packed"]),
                ("ComputeResource(lockfile=..., python_version='3.11'), cache hit", w["packed_pinned"]),
                ("ComputeResource(pre_deployed_env_path=the same env)", w["predeployed"]),
                ("(first run of lockfile=...: cold remote, warm local cache)", [w["cold_first_run"]])]
        for label, rs in rows:
            L.append(f"| {label} | {fmt_s(med([r['step'] for r in rs]), 3)} | "
                     f"{fmt_s(med([r['start_to_sbatch'] for r in rs]), 3)} | {fmt_s(med([r['wall'] for r in rs]), 2)} | "
                     f"{fmt_n(med([r['commands'] for r in rs]))} ({fmt_n(med([r['commands_before_sbatch'] for r in rs]))}) | "
                     f"{fmt_n(med([r['sftp_ops'] for r in rs]))} ({fmt_n(med([r['sftp_before_sbatch'] for r in rs]))}) | "
                     f"{fmt_mb(med([r['bytes_uploaded'] for r in rs]))} |")
        d = {v: med([r["start_to_sbatch"] for r in w[v]]) for v in WARM_VARIANTS}
        st = {v: med([r["step"] for r in w[v]]) for v in WARM_VARIANTS}
        if None not in d.values():
            L += ["", f"Cache-hit overhead before sbatch (medians): **{d['packed'] - d['predeployed']:+.3f} s** "
                  f"(python_version given: {d['packed_pinned'] - d['predeployed']:+.3f} s); on the whole step "
                  f"{st['packed'] - st['predeployed']:+.3f} s / {st['packed_pinned'] - st['predeployed']:+.3f} s, "
                  "which carries Slurm's 0-1 s scheduling-tick noise."]
        for v in ("packed", "predeployed"):
            if w[v]:
                L += [f"Remote operations before sbatch, {v} (one run): " + "; ".join(w[v][0]["ops_before_sbatch"])]
    p3 = results.get("one_dep_change")
    if p3:
        L += ["", "### 3. One-dependency change (same remote base, after a cold deploy)", "",
              "| change | wheels uploaded / total | bytes uploaded | cold upload bytes | ratio | deploy | pack | unpack "
              "| store dirs after |", "|---|---|---|---|---|---|---|---|---|"]
        for key, label in (("small_six", "six 1.16.0 -> 1.17.0 (dagster-pipes + six)"),
                           ("big_pyarrow", "pyarrow 26.0.0 -> 26.0.1 (big lock)")):
            rs = p3[key]
            if not rs:
                continue
            up, cold_up = med([r["upload_bytes"] for r in rs]), med([r["cold_upload_bytes"] for r in rs])
            tot = med([r["wheels_uploaded"] + r["wheels_reused"] for r in rs])
            L.append(f"| {label} | {fmt_n(med([r['wheels_uploaded'] for r in rs]))} / {fmt_n(tot)} | {fmt_mb(up)} | "
                     f"{fmt_mb(cold_up)} | {up / cold_up:.1%} | {fmt_s(med([r['ensure'] for r in rs]))} | "
                     f"{fmt_s(med([r['pack'] for r in rs]))} | {fmt_s(med([r['unpack'] for r in rs]))} | "
                     f"{fmt_n(med([r['store_dirs'] for r in rs]))} |")
        big = p3.get("big_pyarrow") or []
        if big and big[0].get("disk_after_gc"):
            r = big[0]
            L += ["", f"Remote disk after the pyarrow bump (hard links counted once): "
                  f"{fmt_mb(r['disk_after'].get('total_hardlinks_once'))}; after `dagster-slurm env gc --keep 1 "
                  f"--older-than 0s` ({r['gc'].splitlines()[-1] if r['gc'] else '?'}): "
                  f"{fmt_mb(r['disk_after_gc'].get('total_hardlinks_once'))} (wheels/ "
                  f"{fmt_mb(r['disk_after_gc'].get('wheels'))}, .uv-cache/ {fmt_mb(r['disk_after_gc'].get('.uv-cache'))}, "
                  f"envs/ {fmt_mb(r['disk_after_gc'].get('envs'))}); one cold deploy: "
                  f"{fmt_mb(med([x['disk'].get('total_hardlinks_once') for x in results['cold']['big']['lib_cold']]))}."]
    p4 = results.get("concurrent")
    if p4 and cold:
        L += ["", f"### 4. {args.concurrency} concurrent cold runs vs one (ensure_environment child processes, "
              "fresh remote base, fresh local cache(s))", "",
              "| lock | local caches | N runs, common start -> last done | one cold run (ensure) | ratio | all N "
              "processes, start -> exit | one cold run (process) | MISS / HIT | store dirs | bytes uploaded (all N) "
              "| last HIT after publish |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, rs in p4.items():
            name, mode = key.split("/")
            one = med([r["ensure"] for r in cold[name]["lib_cold"]])
            one_wall = med([r["wall"] for r in cold[name]["lib_cold"]])
            span, wall = med([r["span"] for r in rs]), med([r["wall_all"] for r in rs])
            L.append(f"| {name} | {'one, shared (one machine)' if mode == 'shared_cache' else 'one each (N machines)'} "
                     f"| {fmt_s(span)} | {fmt_s(one)} | {span / one:.2f}x | {fmt_s(wall)} | {fmt_s(one_wall)} | "
                     f"{'/'.join(str(r['miss']) for r in rs)} / {'/'.join(str(r['hit']) for r in rs)} | "
                     f"{'/'.join(str(r['store_dirs']) for r in rs)} | {fmt_mb(med([r['bytes_uploaded_total'] for r in rs]))} | "
                     f"{fmt_s(med([r['last_hit_after_publish'] for r in rs]), 2)} |")
        L += ["", "MISS / HIT and store dirs per round (separated by /). 'Common start': the children import Dagster and "
              "connect, wait for each other, then call ensure_environment together; 'start -> exit' includes N "
              f"Python+Dagster start-ups on {os.cpu_count()} CPU(s). One cold run = part 1's 'library, cold local + remote'."]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="1,2,3,4", help="1 and 3 run together (3 reuses 1's cold big deploy)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--warm-runs", type=int, default=7, help="measured rounds of part 2 (after 1 warm-up round)")
    ap.add_argument("--jitter", type=float, default=1.0, help="part 2: random 0..JITTER s pause before each run")
    ap.add_argument("--child", choices=["ensure", "dagster"], help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--t-proc", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--lock", help=argparse.SUPPRESS)
    ap.add_argument("--env-path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--go-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "ensure":
        return child_ensure(args.t_proc, args.base, args.lock, args.out, args.go_file)
    if args.child == "dagster":
        return child_dagster(args.variant, args.t_proc, args.base, args.lock, args.env_path, args.out)

    parts = set(args.parts.split(","))
    load_cluster_env()
    sys.path.insert(0, str(ROOT / "tests"))
    from uv_projects import make_uv_project

    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.agent import transport_for as get_transport

    admin = get_transport(SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"]).settings())
    remote_py = admin.run("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").stdout.strip()
    if remote_py != PY:
        sys.exit(f"the cluster's python3 is {remote_py}, this benchmark resolves for {PY}")
    has_uv = admin.run("command -v uv", check=False).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()
    source = {"git_head": head, "src_dirty": bool(dirty), "src_hash_start": src_fingerprint()}
    results: dict = {}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-packaging-") as tmp_s:
        tmp = Path(tmp_s)
        b = Bench(admin, tmp)
        locks = {"example": EXAMPLE_LOCK,
                 "big": make_big_project(tmp / "big-a", "26.0.0"),
                 "big_bumped": make_big_project(tmp / "big-b", "26.0.1"),
                 "six_a": make_uv_project(tmp / "six-a", six="1.16.0"),
                 "six_b": make_uv_project(tmp / "six-b", six="1.17.0")}
        results["locks"] = {k: {"path": str(v), "packages": v.read_text().count("[[package]]")} for k, v in locks.items()}
        # A warm local cache (wheels + static uv) for the "warm local" variants: one throwaway deploy per lock.
        warm_cache = b.new_cache()
        log("warming the local cache ...")
        for lock in locks.values():
            base = b.new_base()
            b.ensure(base, lock, warm_cache)
            b.drop_base(base)
        try:
            if "1" in parts or "3" in parts:
                part1_and_3(b, locks, warm_cache, args.runs, results)
            if "2" in parts:
                part2(b, locks["example"], warm_cache, args.warm_runs, args.jitter, results)
            if "4" in parts:
                part4(b, locks, args.concurrency, args.runs, results)
        finally:
            for base in b.bases:
                b.drop_base(base)
    source["src_hash_end"] = src_fingerprint()
    if source["src_hash_end"] != source["src_hash_start"]:
        log("WARNING: src/ changed while the benchmark ran; runs may mix library versions")
    table = render(results, args, source)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "duration_s": time.time() - t_start, "cluster_has_uv": bool(has_uv),
                                   "source": source, "results": results, "table": table}, indent=1, default=str))
    log(f"\nraw results: {RESULTS.relative_to(ROOT)} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
