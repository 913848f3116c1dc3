"""Backfill benchmark: N daily partitions of a trivial asset as ONE job-array run, as N single-partition runs,
and the floor, in the same invocation; then N partitions where K fail once, re-executed.

    .venv/bin/python bench/array_backfill.py [--partitions 200] [--parallel-runs 8] [--fail 7]
                                             [--variants floor,array,per_run,reexec]

- floor: N ``sbatch --wrap`` jobs over ONE SSH connection, then ``squeue`` every 0.5 s until all are gone
  (the cluster's own rate for N separate jobs).
- array: one Dagster run over the range (``BackfillPolicy.single_run()``, tests/integration/array_job.py, a
  real DagsterInstance, the multiprocess executor): one array job, one task per partition.
- per_run: N ``dagster asset materialize --partition`` runs, ``--parallel-runs`` at a time (one job each:
  what a backfill without arrays does).
- reexec: N partitions where ``--fail`` of them fail on their first run; the run, then its re-execution from
  failure; reports how many tasks the second array ran.

Each variant starts at a random phase of Slurm's 1 s scheduler tick. Columns: wall s, jobs/s (partitions per
second), sbatch calls and squeue calls (slurmctld's REQUEST_SUBMIT_BATCH_JOB and REQUEST_JOB_INFO* RPC
counts from ``sdiag``), failures. Raw figures go to bench/results/array_backfill.json.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agent_scale import BENCH_BASE, run_floor, run_partitions
from common import load_cluster_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = HERE / "results" / "array_backfill.json"
ARRAY_JOB = ROOT / "tests" / "integration" / "array_job.py"
PAYLOAD = ROOT / "tests" / "payloads" / "partition.py"


def rpcs() -> dict[str, int]:
    out = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
    counts = {"squeue": 0, "sbatch": 0}
    for line in out.splitlines():
        name = line.strip().split(" ")[0]
        if "count:" not in line:
            continue
        count = int(line.split("count:")[1].split()[0])
        if name in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"):
            counts["squeue"] += count
        elif name == "REQUEST_SUBMIT_BATCH_JOB":
            counts["sbatch"] += count
    return counts


def days(n: int) -> list[str]:
    start = time.mktime((2026, 1, 1, 12, 0, 0, 0, 0, 0))
    return [time.strftime("%Y-%m-%d", time.gmtime(start + 86400 * i)) for i in range(n)]


def dagster_home(tmp: Path) -> Path:
    home = Path(tempfile.mkdtemp(dir=tmp))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def array_env(env: dict, tmp: Path, keys: list[str], fail_once: list[str], markers: str) -> dict:
    return {**env, "DAGSTER_HOME": str(dagster_home(tmp)), "TEST_ASSET": f"bench_{uuid.uuid4().hex[:8]}",
            "TEST_PAYLOAD": str(PAYLOAD), "TEST_SECONDS": "0", "TEST_RANGE": f"{keys[0]}..{keys[-1]}",
            "TEST_FAIL_ONCE": ",".join(fail_once), "TEST_MARKERS": markers}


def run_array(env: dict, mode: str) -> str:
    out = subprocess.run([sys.executable, str(ARRAY_JOB), mode], env=env, capture_output=True, text=True)
    if not out.stdout.strip().endswith(("SUCCESS", "FAILURE")):
        print((out.stdout + out.stderr)[-3000:], file=sys.stderr)
    return out.stdout.strip().rsplit("\n", 1)[-1] if out.stdout.strip() else "CRASH"


def tasks_of_latest_array(transport, asset: str) -> int:
    out = transport.run("sacct -X -n -P -S now-1hours -o JobID,JobName", retry=True).stdout
    ids = [row.split("|")[0] for row in out.splitlines() if f"dagster-{asset}-" in row]
    arrays = sorted({int(i.split("_")[0]) for i in ids})
    return sum(1 for i in ids if int(i.split("_")[0]) == arrays[-1]) if arrays else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--parallel-runs", type=int, default=8)
    ap.add_argument("--fail", type=int, default=7)
    ap.add_argument("--variants", default="floor,array,per_run,reexec")
    args = ap.parse_args()
    load_cluster_env()
    from remote_env import make_pipes_env

    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.transport import SSHTransport

    tmp = Path(tempfile.mkdtemp(prefix="dsa-array-bench-", dir="/tmp"))
    admin = SSHTransport(SSHConnectionResource.from_env(share_connection="direct").settings())
    env_path = make_pipes_env(admin, f"{BENCH_BASE}/envs/pipes")
    base = admin.absolute(BENCH_BASE)
    env = {**os.environ, "TEST_REMOTE_BASE": base, "TEST_ENV": env_path,
           "DAGSTER_SLURM_RUNTIME_DIR": tempfile.mkdtemp(prefix="a-", dir=tmp)}
    os.environ["DAGSTER_SLURM_RUNTIME_DIR"] = env["DAGSTER_SLURM_RUNTIME_DIR"]
    keys = days(args.partitions)
    results = []
    for variant in args.variants.split(","):
        time.sleep(random.random())  # a random phase of Slurm's scheduler tick
        before = rpcs()
        t0 = time.monotonic()
        if variant == "floor":
            rec = run_floor(args.partitions, env)
        elif variant == "array":
            status = run_array(array_env(env, tmp, keys, [], ""), "run")
            rec = {"jobs": args.partitions, "failures": 0 if status == "SUCCESS" else 1}
        elif variant == "per_run":
            rec = run_partitions(args.partitions, args.parallel_runs,
                                 {**env, "TEST_PAYLOAD": str(ROOT / "tests" / "payloads" / "trivial.py")}, tmp)
        elif variant == "reexec":
            fail = random.sample(keys, args.fail)
            run_env = array_env(env, tmp, keys, fail, f"{base}/markers-{uuid.uuid4().hex}")
            first = run_array(run_env, "run")
            t1 = time.monotonic()
            second = run_array(run_env, "reexec")
            rec = {"jobs": args.partitions, "first": first, "second": second, "reexec_wall": time.monotonic() - t1,
                   "tasks_rerun": tasks_of_latest_array(admin, run_env["TEST_ASSET"]),
                   "failures": int(first != "FAILURE") + int(second != "SUCCESS")}
        else:
            raise SystemExit(f"unknown variant {variant}")
        wall = time.monotonic() - t0
        after = rpcs()
        rec.update(variant=variant, wall=wall, jobs_per_s=rec["jobs"] / wall,
                   sbatch_calls=after["sbatch"] - before["sbatch"], squeue_calls=after["squeue"] - before["squeue"])
        subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "agent", "stop"], env=env, capture_output=True)
        results.append(rec)
        print(json.dumps(rec), flush=True)
    admin.close()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    floor = next((r["wall"] for r in results if r["variant"] == "floor"), None)
    print("\n| variant | partitions | wall s | partitions/s | vs floor | sbatch calls | squeue calls | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['wall'] / floor:.2f}x" if floor else "-"
        print(f"| {r['variant']} | {r['jobs']} | {r['wall']:.1f} | {r['jobs_per_s']:.2f} | {ratio} | {r['sbatch_calls']} "
              f"| {r['squeue_calls']} | {r['failures']} |")
    for r in results:
        if r["variant"] == "reexec":
            print(f"\nreexec: first run {r['first']}, re-execution {r['second']} in {r['reexec_wall']:.1f} s, "
                  f"tasks re-run: {r['tasks_rerun']} (of {args.fail} failed)")


if __name__ == "__main__":
    main()
