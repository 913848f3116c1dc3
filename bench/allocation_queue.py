"""Queue waits paid once: a chain and a fan-out of 6 assets on a busy cluster, per job vs. in one allocation.

The busy cluster: node n1 of the test cluster (one CPU) behind a FIFO queue that a background submitter
keeps full (another user's jobs, here named bench-filler: one running, --fillers pending, each sleeping
--filler-seconds), so each new job of ours waits a real queue time. Every variant runs its 6 assets there:

- per-job:   each asset is its own Slurm job (the library without an allocation)
- run:       SlurmAllocation(scope="run") on n1: one holder job, the assets as its steps
- named:     SlurmAllocation(scope="named"): a first run, then a second run right after it (joins)

Shapes: chain (6 dependent assets, in-process executor: one step after the other) and fan-out (6
independent assets, multiprocess executor, max_concurrent=6). Each asset's payload sleeps --work seconds.

Figures per run: wall (first STEP_START -> last STEP_SUCCESS, from the event log), queue waits paid (jobs
of ours that waited, and their seconds: sacct Submit->Start of each job, the allocation's own wait for the
allocation modes, 0 for a run that joined), and the floor "one queue wait + the sum of the work": the
queue wait of that run's first job (the allocation's, or the first per-job job's) plus 6 x --work. On one
CPU the work cannot overlap, so the floor holds for the fan-out too. Each run starts at a random phase of
Slurm's 1 s scheduler tick (0-1 s pause).

    .venv/bin/python bench/allocation_queue.py                 # 2 rounds, ~10 min
    .venv/bin/python bench/allocation_queue.py --rounds 1 --shapes chain
"""



import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg

from dagster_slurm import (
    ComputeResource,
    SlurmAllocation,
    SlurmQueueConfig,
    SlurmResource,
    SSHConnectionResource,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, load_cluster_env  # noqa: E402

N = 6
FILLER = "bench-filler"


def fill(transport, stop: threading.Event, pending: int, seconds: float) -> None:
    """Keep `pending` filler jobs queued on n1 behind the running one (FIFO: ours queue behind them)."""
    while not stop.is_set():
        out = transport.run(f"squeue -h -n {FILLER} -t PENDING -o %i", check=False).stdout.split()
        for _ in range(max(0, pending - len(out))):
            transport.run(f"sbatch -J {FILLER} -p multinode -w n1 -t 1 --mem=50M -o /dev/null "
                          f"--wrap 'sleep {seconds}'", check=False)
        stop.wait(0.5)


def build(shape: str, mode: str, work: float, name: str, prefix: str):
    payload = str(ROOT / "tests" / "payloads" / "sleeps.py")
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["BENCH_REMOTE_BASE"],
                          queue=SlurmQueueConfig(partition="multinode", mem="100M", time_limit="00:05:00",
                                                 extra_sbatch_options={"nodelist": "n1"}))
    allocation = None
    if mode != "per-job":
        allocation = SlurmAllocation(cpus=1, mem="1G", time_limit="00:20:00", partition="multinode",
                                     nodelist="n1", scope="named" if mode.startswith("named") else "run",
                                     name=name if mode.startswith("named") else None, idle_timeout=30)
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["BENCH_ENV"],
                              allocation=allocation)

    def make(i: int):
        deps = [f"{prefix}_{i - 1}"] if shape == "chain" and i else None

        @dg.asset(name=f"{prefix}_{i}", deps=deps)
        def _a(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(context=context, payload_path=payload, extras={"seconds": work}).get_results()

        return _a

    executor = dg.in_process_executor if shape == "chain" else \
        dg.multiprocess_executor.configured({"max_concurrent": N})
    return dg.Definitions(assets=[make(i) for i in range(N)], resources={"compute": compute},
                          jobs=[dg.define_asset_job("bench", executor_def=executor)])


def run_once(shape: str, mode: str, work: float, name: str, home: str) -> dict:
    """One Dagster run in a child process (a real instance on disk); its figures from the event log."""
    import subprocess

    prefix = f"q{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DAGSTER_HOME": home}  # the child's job is reconstructable: job_of() reads these
    env.update(BENCH_SHAPE=shape, BENCH_MODE=mode, BENCH_WORK=str(work), BENCH_NAME=name, BENCH_PREFIX=prefix)
    proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0 or "BENCH-RESULT " not in proc.stdout:
        raise RuntimeError(f"{shape}/{mode} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("BENCH-RESULT ", 1)[1].splitlines()[0])


def job_of():
    e = os.environ
    return build(e["BENCH_SHAPE"], e["BENCH_MODE"], float(e["BENCH_WORK"]), e["BENCH_NAME"],
                 e["BENCH_PREFIX"]).resolve_job_def("bench")


def child() -> None:
    instance = dg.DagsterInstance.get()
    result = dg.execute_job(dg.reconstructable(job_of), instance=instance)
    starts, ends, metas = [], [], []
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts.append(entry.timestamp)
        elif event.event_type_value == "STEP_SUCCESS":
            ends.append(entry.timestamp)
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            meta = event.event_specific_data.materialization.metadata
            metas.append({k: v.value for k, v in meta.items() if k.startswith("slurm_")})
    print("BENCH-RESULT " + json.dumps({"success": result.success, "wall": max(ends) - min(starts) if ends else None,
                                        "first_start": min(starts) if starts else None, "metadata": metas}),
          flush=True)


def figures(run: dict, work: float) -> dict:
    metas = run["metadata"]
    if any("slurm_allocation_id" in m for m in metas):
        allocations = {m["slurm_allocation_id"] for m in metas}
        waits = [m.get("slurm_allocation_queue_wait_seconds", 0) for m in metas
                 if m.get("slurm_queue_wait_saved_seconds", 1) == 0]  # the steps that did not join: paid it
        paid = sorted(set(waits))[-1:] if waits else []
        one_wait = paid[0] if paid else 0
        jobs = len(allocations)
    else:
        paid = [m.get("slurm_queue_wait_seconds", 0) for m in metas]
        one_wait = min(paid) if paid else 0  # the first job's, at best
        jobs = len(metas)
    floor = one_wait + N * work
    return {"wall": run["wall"], "jobs": jobs, "waits_paid": sum(1 for w in paid if w >= 1),
            "wait_seconds_paid": sum(paid), "floor": floor, "over_floor": run["wall"] - floor,
            "over_floor_per_asset": (run["wall"] - floor) / N}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shapes", default="chain,fanout")
    parser.add_argument("--modes", default="per-job,run,named")
    parser.add_argument("--work", type=float, default=2.0, help="seconds each payload sleeps")
    parser.add_argument("--fillers", type=int, default=2, help="filler jobs kept pending ahead of ours")
    parser.add_argument("--filler-seconds", type=float, default=5.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    load_cluster_env()
    import tempfile

    from remote_env import make_pipes_env

    from dagster_slurm.agent import transport_for

    transport = transport_for(SSHConnectionResource.from_env(
        known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"]).settings())
    os.environ["BENCH_REMOTE_BASE"] = transport.absolute("dagster-slurm-bench")
    os.environ["BENCH_ENV"] = make_pipes_env(transport, "dagster-slurm-bench/envs/pipes")
    stop = threading.Event()
    filler = threading.Thread(target=fill, args=(transport, stop, args.fillers, args.filler_seconds), daemon=True)
    filler.start()
    results: list[dict] = []
    try:
        time.sleep(3 * args.filler_seconds)  # the queue is full before the first measured run
        for rnd in range(args.rounds):
            for shape in args.shapes.split(","):
                modes = args.modes.split(",")
                random.Random(rnd).shuffle(modes)
                for mode in modes:
                    home = tempfile.mkdtemp(prefix="bench-alloc-")
                    Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
                    name = f"bench-{uuid.uuid4().hex[:6]}"
                    for label in (["named 1st", "named 2nd"] if mode == "named" else [mode]):
                        time.sleep(random.random())  # a random phase of Slurm's scheduler tick
                        run = run_once(shape, "named" if mode == "named" else mode, args.work, name, home)
                        fig = figures(run, args.work)
                        results.append({"round": rnd, "shape": shape, "mode": label, **fig, "raw": run})
                        print(f"round {rnd} {shape:7} {label:10} wall {fig['wall']:6.1f} s  floor "
                              f"{fig['floor']:5.1f} s  waits paid {fig['waits_paid']} ({fig['wait_seconds_paid']} s)"
                              f"  over floor {fig['over_floor_per_asset']:+.2f} s/asset", file=sys.stderr)
                    if mode == "named":  # its holder ends after idle_timeout: let it go before the next variant
                        time.sleep(32)
    finally:
        stop.set()
        filler.join(timeout=10)
        transport.run(f"scancel -n {FILLER}", check=False)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "allocation_queue.json").write_text(json.dumps(results, indent=1))
    print(f"\n{N} assets each, payload {args.work:g} s; queue kept full by {args.fillers} pending "
          f"{args.filler_seconds:g}-s filler jobs on one node; medians of {args.rounds} round(s)\n")
    print("| shape | mode | wall s | floor s | queue waits paid (s) | over floor per asset s |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        for label in ("per-job", "run", "named 1st", "named 2nd"):
            rows = [r for r in results if r["shape"] == shape and r["mode"] == label]
            if not rows:
                continue
            m = {k: statistics.median(r[k] for r in rows) for k in
                 ("wall", "floor", "waits_paid", "wait_seconds_paid", "over_floor_per_asset")}
            print(f"| {shape} | {label} | {m['wall']:.1f} | {m['floor']:.1f} | {m['waits_paid']:g} "
                  f"({m['wait_seconds_paid']:g}) | {m['over_floor_per_asset']:+.2f} |")


if __name__ == "__main__":
    main()
