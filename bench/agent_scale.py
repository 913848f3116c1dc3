"""Scale benchmark: many assets, many processes, many runs against one login node, with the connection agent.

    .venv/bin/python bench/agent_scale.py [--assets 100] [--partitions 50] [--parallel-runs 8] [--storm 100]
                                          [--variants floor,mp2,mp16,inproc,slurm8,slurm16,slurm8_alloc,inproc_alloc,...]

Every variant logs in to a measuring sshd this benchmark starts on 127.0.0.1:2224 (the test cluster's sshd
settings with ``LogLevel VERBOSE`` and OpenSSH's default ``MaxStartups 10:30:100``), so logins are counted
by the server. Each variant gets a fresh agent folder (its agent starts, and logs in, within the variant).

- floor: ``--assets`` ``sbatch --wrap`` jobs over ONE SSH connection, then ``squeue`` every 0.5 s until all
  are gone: the cluster's own rate, measured in the same invocation.
- mp2 / mp16 / inproc: ``--assets`` trivial assets in one Dagster run (multiprocess executor with
  max_concurrent 2 or 16, or the in_process executor), real DagsterInstance.
- slurm8 / slurm16 (/ _alloc): the same run with ``dagster_slurm.slurm_executor(8 or 16)`` (multiprocess,
  step processes forked from a forkserver that preloaded Dagster and dagster-slurm); ``_alloc``: every asset
  a step of one run-scoped allocation of the node's 2 CPUs; ``inproc_alloc``: the in_process executor so.
- partitions: ``--partitions`` daily partitions as that many ``dagster asset materialize`` runs,
  ``--parallel-runs`` at a time.
- storm / storm_direct: ``--storm`` processes start at once and each runs one remote command, through the
  agent / each with its own connection; counts the processes that failed.

Columns: wall s, jobs/s, SSH logins (server log), peak concurrent SSH connections (sampled every 50 ms),
squeue calls (slurmctld's REQUEST_JOB_INFO* RPC counts from ``sdiag``), failures. Raw figures go to
bench/results/agent_scale.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import load_cluster_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = HERE / "results" / "agent_scale.json"
TESTCLUSTER = Path("/var/lib/dagster-slurm-testcluster")
PORT = 2224
BENCH_BASE = "dagster-slurm-bench"
TRIVIAL = ROOT / "tests" / "payloads" / "trivial.py"
MULTI_JOB = ROOT / "tests" / "integration" / "multi_job.py"

PARTITIONED = '''
import os
import dagster as dg
from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource

@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
def daily(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(context=context, payload_path=os.environ["TEST_PAYLOAD"]).get_results()

ssh = SSHConnectionResource.from_env()
slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                      queue=SlurmQueueConfig(mem="64M", time_limit="00:05:00"))
defs = dg.Definitions(assets=[daily], resources={"compute": ComputeResource(
    mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"])})
'''


# ============================================================================ the measuring sshd
class MeasuringSshd:
    def __init__(self, tmp: Path):
        self.dir = tmp / "sshd"
        self.dir.mkdir()
        self.log = self.dir / "sshd.log"
        self.pid_file = self.dir / "sshd.pid"
        self.known_hosts = self.dir / "known_hosts"
        config = (TESTCLUSTER / "sshd_config").read_text().splitlines()
        keep = [line for line in config if line.split(" ")[0] not in ("Port", "PidFile", "MaxStartups", "LogLevel")]
        keep += [f"Port {PORT}", f"PidFile {self.pid_file}", "MaxStartups 10:30:100", "LogLevel VERBOSE"]
        (self.dir / "sshd_config").write_text("\n".join(keep) + "\n")
        hostkey = " ".join((TESTCLUSTER / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{PORT} {hostkey}\n")

    def start(self) -> None:
        subprocess.run(["/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"), "-E", str(self.log)], check=True)
        deadline = time.monotonic() + 10
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text())
            if Path(f"/proc/{pid}/comm").exists() and "sshd" in Path(f"/proc/{pid}/comm").read_text():
                os.kill(pid, 15)

    def logins(self) -> int:
        return sum("Accepted publickey for" in line for line in self.log.read_text(errors="replace").splitlines())

    def established(self) -> int:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{PORT} )"],
                             capture_output=True, text=True).stdout
        return len([line for line in out.splitlines() if line.strip()])


class PeakSampler(threading.Thread):
    def __init__(self, sshd: MeasuringSshd):
        super().__init__(daemon=True)
        self.sshd, self.peak, self.stop_flag = sshd, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.sshd.established())
            time.sleep(0.05)


def squeue_rpcs() -> int:
    out = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        name = line.strip().split(" ")[0]
        if name in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"):
            total += int(line.split("count:")[1].split()[0])
    return total


# ============================================================================ variants
def run_floor(n: int, env: dict) -> dict:
    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.transport import SSHTransport

    t = SSHTransport(SSHConnectionResource.from_env(share_connection="direct").settings())
    ids = []
    for i in range(n):
        ids.append(t.run(f"sbatch --parsable --mem=64M -t 5 -J floor-{i} -o /dev/null "
                         f"--wrap 'python3 -c pass'").stdout.strip().split(";")[0])
    while t.run(f"squeue -h -j {','.join(ids)} -o %i", check=False).stdout.strip():
        time.sleep(0.5)
    t.close()
    return {"jobs": n, "failures": 0}


def run_multi(n: int, env: dict, executor: str, concurrency: int, tmp: Path, alloc_cpus: int = 0) -> dict:
    home = Path(tempfile.mkdtemp(dir=tmp))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    job_env = {**env, "DAGSTER_HOME": str(home), "TEST_ASSETS": str(n), "TEST_CONCURRENCY": str(concurrency),
               "TEST_EXECUTOR": executor, "TEST_ALLOCATION_CPUS": str(alloc_cpus)}
    out = subprocess.run([sys.executable, str(MULTI_JOB)], env=job_env, capture_output=True, text=True)
    ok = out.stdout.strip().endswith("SUCCESS")
    startup = [line for line in out.stdout.splitlines() if line.startswith("STEP_PROCESS_STARTUP")]
    total = float(startup[0].split("total=")[1].split()[0]) if startup else 0.0
    median = float(startup[0].split("median=")[1]) if startup else 0.0
    failed = out.stdout.count("STEP_FAILURE") + (0 if ok else 1)
    if not ok:
        print((out.stdout + out.stderr)[-3000:], file=sys.stderr)
    return {"jobs": n, "failures": 0 if ok else failed, "step_process_startup_total": total,
            "step_process_startup_median": median, "concurrency": concurrency}


def run_partitions(n: int, parallel: int, env: dict, tmp: Path) -> dict:
    home = Path(tempfile.mkdtemp(dir=tmp))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = tmp / "partitioned_defs.py"
    defs.write_text(PARTITIONED)
    run_env = {**env, "DAGSTER_HOME": str(home)}
    subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get()"], env=run_env, check=True)
    dagster = str(Path(sys.executable).parent / "dagster")
    days = [time.strftime("%Y-%m-%d", time.gmtime(time.mktime((2026, 1, 1, 12, 0, 0, 0, 0, 0)) + 86400 * i))
            for i in range(n)]
    failures = 0
    running: list[subprocess.Popen] = []
    for day in days:
        while len(running) >= parallel:
            for p in list(running):
                if p.poll() is not None:
                    running.remove(p)
                    failures += p.returncode != 0
            time.sleep(0.05)
        running.append(subprocess.Popen([dagster, "asset", "materialize", "-f", str(defs), "--select", "daily",
                                         "--partition", day], env=run_env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
    for p in running:
        failures += p.wait() != 0
    return {"jobs": n, "failures": failures}


STORM_CLIENT = ("from dagster_slurm import SSHConnectionResource as R\n"
                "from dagster_slurm.agent import transport_for\n"
                "print(transport_for(R.from_env().settings()).run('echo ok').stdout.strip())")


def run_storm(n: int, env: dict, share: str) -> dict:
    storm_env = {**env, "SLURM_EDGE_NODE_SHARE_CONNECTION": share}
    procs = [subprocess.Popen([sys.executable, "-c", STORM_CLIENT], env=storm_env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    return {"jobs": 0, "failures": sum(o.strip() != "ok" for o in outs)}


# ============================================================================ main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=50)
    ap.add_argument("--parallel-runs", type=int, default=8)
    ap.add_argument("--storm", type=int, default=100)
    ap.add_argument("--variants", default="floor,mp2,mp16,inproc,partitions,storm,storm_direct")
    args = ap.parse_args()
    load_cluster_env()
    from remote_env import make_pipes_env

    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.transport import SSHTransport

    tmp = Path(tempfile.mkdtemp(prefix="dsa-bench-", dir="/tmp"))
    sshd = MeasuringSshd(tmp)
    sshd.start()
    results = []
    try:
        admin = SSHTransport(SSHConnectionResource.from_env(share_connection="direct").settings())
        env_path = make_pipes_env(admin, f"{BENCH_BASE}/envs/pipes")
        base = admin.absolute(BENCH_BASE)
        admin.close()
        for variant in args.variants.split(","):
            runtime = tempfile.mkdtemp(prefix="a-", dir=tmp)
            env = {**os.environ, "SLURM_EDGE_NODE_PORT": str(PORT), "SLURM_EDGE_NODE_KNOWN_HOSTS": str(sshd.known_hosts),
                   "TESTCLUSTER_KNOWN_HOSTS": str(sshd.known_hosts), "DAGSTER_SLURM_RUNTIME_DIR": runtime,
                   "TEST_PAYLOAD": str(TRIVIAL), "TEST_REMOTE_BASE": base, "TEST_ENV": env_path}
            os.environ.update({k: env[k] for k in ("SLURM_EDGE_NODE_PORT", "SLURM_EDGE_NODE_KNOWN_HOSTS",
                                                   "DAGSTER_SLURM_RUNTIME_DIR")})
            logins0, rpcs0 = sshd.logins(), squeue_rpcs()
            sampler = PeakSampler(sshd)
            sampler.start()
            t0 = time.monotonic()
            if variant == "floor":
                rec = run_floor(args.assets, env)
            elif variant in ("mp2", "mp16"):
                rec = run_multi(args.assets, env, "multiprocess", 2 if variant == "mp2" else 16, tmp)
            elif variant in ("slurm8", "slurm16"):
                rec = run_multi(args.assets, env, "slurm", int(variant[5:]), tmp)
            elif variant in ("slurm8_alloc", "slurm16_alloc"):  # the same, every asset a step of one allocation
                rec = run_multi(args.assets, env, "slurm", int(variant[5:].split("_")[0]), tmp, alloc_cpus=2)
            elif variant == "inproc_alloc":
                rec = run_multi(args.assets, env, "in_process", 1, tmp, alloc_cpus=2)
            elif variant == "inproc":
                rec = run_multi(args.assets, env, "in_process", 1, tmp)
            elif variant == "partitions":
                rec = run_partitions(args.partitions, args.parallel_runs, env, tmp)
            elif variant in ("storm", "storm_direct"):
                rec = run_storm(args.storm, env, "auto" if variant == "storm" else "direct")
            else:
                raise SystemExit(f"unknown variant {variant}")
            wall = time.monotonic() - t0
            sampler.stop_flag.set()
            sampler.join()
            time.sleep(1.0)  # the server's last log lines
            subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "agent", "stop"], env=env,
                           capture_output=True)
            rec.update(variant=variant, wall=wall, logins=sshd.logins() - logins0, peak_connections=sampler.peak,
                       squeue_calls=squeue_rpcs() - rpcs0, jobs_per_s=rec["jobs"] / wall if rec["jobs"] else None)
            results.append(rec)
            print(json.dumps(rec), flush=True)
    finally:
        sshd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print("\n| variant | jobs | wall s | jobs/s | SSH logins | peak connections | squeue calls | failures "
          "| step process start-up (median, total) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        jps = f"{r['jobs_per_s']:.2f}" if r["jobs_per_s"] else "-"
        start = (f"{r['step_process_startup_median']:.2f} s, {r['step_process_startup_total']:.0f} s"
                 if r.get("step_process_startup_total") else "-")
        print(f"| {r['variant']} | {r['jobs']} | {r['wall']:.1f} | {jps} | {r['logins']} | {r['peak_connections']} "
              f"| {r['squeue_calls']} | {r['failures']} | {start} |")


if __name__ == "__main__":
    main()
