"""Step-time benchmark: dagster-slurm local mode, slurm mode, and the tight SSH+sbatch floor.

    .venv/bin/python bench/step_time.py [--runs 7] [--warmup 1]

One invocation runs every variant N times, interleaved run by run (the order rotates each round), each
run in a fresh Python process, and prints medians as a markdown table. Raw per-run figures go to
bench/results/step_time.json. See bench/README.md for what each column means.

Needs the test cluster of scripts/testcluster.sh (started if it is not running). The cluster runs on
this machine, so remote file mtimes and local ``time.time()`` share one clock; the benchmark uses that
to time the job's real end (the mtime of the ``exit_code`` file the job script writes last).
"""

import argparse
import json
import os
import shlex
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
RESULTS = HERE / "results" / "step_time.json"
CLUSTER_ENV_FILE = Path("/var/lib/dagster-slurm-testcluster/env.sh")
BENCH_BASE = "dagster-slurm-bench"  # relative to the remote home
ENV_REL = f"{BENCH_BASE}/envs/pipes"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
QUEUE = {"cpus-per-task": "1", "mem": "256M", "time": "01:00:00"}  # what ComputeResource renders too


# =============================================================================================== children
def _events(instance, run_id: str) -> dict:
    """Timestamps of the run's lifecycle events and the materialization's metadata, from the event log."""
    out: dict = {"metadata": {}}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None:
            msg = entry.user_message or ""
            if "hello from the payload t=" in msg and "t_payload_log" not in out:
                out["t_payload_log"] = float(msg.rsplit("t=", 1)[1].split()[0])
            continue
        name = ev.event_type_value
        out.setdefault(name, entry.timestamp)
        if name == "ASSET_MATERIALIZATION":
            for key, value in ev.event_specific_data.materialization.metadata.items():
                out["metadata"][key] = getattr(value, "value", str(value))
    return out


def _instrument(transport, rec: dict) -> None:
    """Wrap this process's transport (instance attributes only) to timestamp every remote operation.

    Costs microseconds per call and no remote traffic: the job's end is read with a *local* stat of
    the run folder's exit_code file (the cluster shares this machine's filesystem) right before the
    library's own ``rm -rf`` of its step-call folder (attempt 0 is the run folder: a fresh run).
    """
    ops = rec.setdefault("ops", [])
    orig_run, orig_read_many = transport.run, transport.read_many
    direct = hasattr(transport, "_file_op")  # an SSHTransport; else the AgentTransport of the shared agent
    orig_file_op = transport._file_op if direct else transport._file

    def note_end(command):
        if command.startswith("rm -rf -- ") and "job_end" not in rec:
            run_dir = os.path.join(shlex.split(command)[3], "0")  # step-call folder / attempt 0
            for name in ("exit_code", "stdout.log", "messages.jsonl"):
                try:
                    rec.setdefault("files", {})[name] = os.stat(os.path.join(run_dir, name)).st_mtime
                except OSError:
                    pass
            rec["job_end"] = rec.get("files", {}).get("exit_code")

    def run(command, **kw):
        note_end(command)
        t0 = time.time()
        result = orig_run(command, **kw)
        ops.append({"kind": "cmd", "t0": t0, "t1": time.time(), "what": command[:160],
                    "out": result.stdout.strip()[:200], "rc": result.exit_status})
        return result

    def file_op(what, path, *args, **kw):  # direct: (what, path, op, timeout); agent: (op name, args)
        t0 = time.time()
        try:
            return orig_file_op(what, path, *args, **kw)
        finally:
            ops.append({"kind": "sftp", "t0": t0, "t1": time.time(), "what": f"{what} {path}"[:160]})

    def read_many(requests, size=1 << 20):
        chunks = orig_read_many(requests, size)
        for (path, _), data in zip(requests, chunks):
            if path.endswith("/exit_code") and data and "reader_saw_exit" not in rec:
                rec["reader_saw_exit"] = time.time()
        return chunks

    orig_run_later = transport.run_later

    def run_later(command):
        note_end(command)
        t0 = time.time()
        orig_run_later(command)
        ops.append({"kind": "cmd", "t0": t0, "t1": time.time(), "what": command[:160], "out": "", "rc": 0})

    transport.run, transport.read_many, transport.run_later = run, read_many, run_later
    if direct:
        transport._file_op = file_op
    else:
        transport._file = file_op


def child_dagster(mode: str, t_proc: float, env_path: str, out: str, sleep: float) -> None:
    import dagster as dg
    from dagster import DagsterInstance

    from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource

    rec: dict = {"t_proc": t_proc, "t_imported": time.time()}
    payload = str(PAYLOAD)

    @dg.asset
    def trivial(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload, extras={"sleep": sleep} if sleep else None
                           ).get_results()

    transport = None
    if mode == "local":
        compute = ComputeResource(mode="local")
    else:
        from dagster_slurm.agent import transport_for as get_transport

        ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
        slurm = SlurmResource(ssh=ssh, remote_base=BENCH_BASE,
                              queue=SlurmQueueConfig(cpus=1, mem="256M"))
        compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=env_path)
        transport = get_transport(ssh.settings())  # the same pooled instance the resource will use
        _instrument(transport, rec)

    instance = DagsterInstance.ephemeral()
    result = dg.materialize([trivial], resources={"compute": compute}, instance=instance)
    rec["success"] = result.success
    rec["events"] = _events(instance, result.run_id)
    if transport is not None:
        s = transport.stats
        rec["stats"] = {"connections": s.connections, "channels": s.channels, "commands": s.commands,
                        "sftp_ops": s.sftp_ops, "bytes_uploaded": s.bytes_uploaded,
                        "command_log": list(s.command_log)}
        rec["job_id"] = str(rec["events"]["metadata"].get("slurm_job_id", ""))
    rec["t_done"] = time.time()
    Path(out).write_text(json.dumps(rec))


def _floor_script(run_dir: str, env_path: str, pipes_env: dict) -> str:
    q = shlex.quote
    directives = {**QUEUE, "job-name": "bench-floor", "output": f"{run_dir}/stdout.log",
                  "error": f"{run_dir}/stderr.log", "chdir": run_dir}
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={q(v)}" for k, v in sorted(directives.items())]
    lines += [f"export {k}={q(v)}" for k, v in pipes_env.items()]
    lines += [f". {q(env_path + '/activate.sh')} || exit 97", f"python {q(run_dir + '/payload.py')}", "rc=$?",
              (f'printf "%s\\n" "$rc" > {q(run_dir + "/exit_code.tmp")} && '
              f'mv -f {q(run_dir + "/exit_code.tmp")} {q(run_dir + "/exit_code")}'), 'exit "$rc"']
    return "\n".join(lines) + "\n"


def child_floor(t_proc: float, env_path: str, out: str, sleep: float) -> None:
    """The tight floor: one asyncssh connection, SFTP upload, sbatch, squeue every 0.1 s on one shell."""
    import asyncio

    import asyncssh
    from dagster_pipes import encode_param

    rec: dict = {"t_proc": t_proc, "t_imported": time.time(), "channels": 0, "commands": 0, "polls": 0}
    host, port = os.environ["SLURM_EDGE_NODE_HOST"], int(os.environ["SLURM_EDGE_NODE_PORT"])
    base = f"{env_path.rsplit('/envs/', 1)[0]}/floor"  # absolute (made by the parent): no realpath trip
    run_dir = f"{base}/{uuid.uuid4().hex}"
    # Same payload, real dagster-pipes on the node: a file-based context ("data" inline) and a messages
    # file, exactly the bootstrap the library's env.sh carries; nobody reads the messages afterwards.
    context = {"asset_keys": ["trivial"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
               "partition_key": None, "partition_key_range": None, "partition_time_window": None,
               "run_id": uuid.uuid4().hex, "job_name": "bench", "retry_number": 0,
               "extras": {"sleep": sleep} if sleep else {}}
    pipes_env = {"DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
                 "DAGSTER_PIPES_MESSAGES": encode_param({"path": f"{run_dir}/messages.jsonl"})}
    script = _floor_script(run_dir, env_path, pipes_env).encode()
    payload = PAYLOAD.read_bytes()

    async def main() -> None:
        conn = await asyncssh.connect(
            host, port=port, username=os.environ["SLURM_EDGE_NODE_USER"],
            client_keys=[os.environ["SLURM_EDGE_NODE_KEY_PATH"]], agent_path=None,
            known_hosts=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
        rec["t_connected"] = time.time()

        async def stage():
            sftp = await conn.start_sftp_client()
            rec["channels"] += 1
            await sftp.mkdir(run_dir)

            async def write(name: str, data: bytes, mode: int):
                async with sftp.open(f"{run_dir}/{name}", "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
                    await fh.write(data)

            await asyncio.gather(write("payload.py", payload, 0o644), write("job.sh", script, 0o700))
            return sftp

        async def shell():
            proc = await conn.create_process("exec /bin/sh", encoding=None)
            rec["channels"] += 1
            return proc

        sftp, sh = await asyncio.gather(stage(), shell())
        rec["t_staged"] = time.time()

        async def cmd(text: str) -> tuple[int, str]:
            rec["commands"] += 1
            sh.stdin.write(f"{text} 2>&1; printf '\\n__END %d\\n' $?\n".encode())
            out = await sh.stdout.readuntil(b"\n__END ")
            rc = int((await sh.stdout.readline()).strip())
            return rc, out[:-len(b"\n__END ")].decode()

        rec["t_sbatch_sent"] = time.time()
        rc, text = await cmd(f"cd {shlex.quote(run_dir)} && sbatch --parsable job.sh")
        rec["t_sbatch_done"] = time.time()
        if rc != 0:
            raise RuntimeError(f"sbatch failed: {text}")
        job_id = text.strip().split(";")[0]
        rec["job_id"] = job_id
        while True:
            t = time.time()
            rc, text = await cmd(f"squeue -h -j {job_id} -o %T")
            rec["polls"] += 1
            state = text.strip()
            if state == "RUNNING" and "t_running_seen" not in rec:
                rec["t_running_seen"] = time.time()
            if not state or state in TERMINAL or "Invalid job id" in state:
                rec["t_seen_finished"] = time.time()
                rec["final_state"] = state
                break
            await asyncio.sleep(max(0.0, 0.1 - (time.time() - t)))
        rec["commands_before_sbatch"] = 0
        sh.stdin.write_eof()
        sftp.exit()
        conn.close()
        await conn.wait_closed()

    asyncio.run(main())
    try:  # the job's end, on this machine's clock (outside the figures above; cleanup is the parent's)
        rec["job_end"] = os.stat(f"{run_dir}/exit_code").st_mtime
    except OSError:
        rec["job_end"] = None
    try:  # the payload's start as it logged it (the messages file nobody read during the run)
        for line in Path(f"{run_dir}/messages.jsonl").read_text().splitlines():
            if "hello from the payload t=" in line:
                msg = json.loads(line)["params"]["message"]
                rec["t_payload_log"] = float(msg.rsplit("t=", 1)[1].split()[0])
    except (OSError, ValueError, KeyError):
        pass
    rec["run_dir"] = run_dir
    rec["t_done"] = time.time()
    Path(out).write_text(json.dumps(rec))


# =============================================================================================== derive
def _first(ops, pred, field="t0"):
    for op in ops:
        if pred(op):
            return op[field]
    return None


def derive_dagster(rec: dict, wall: float) -> dict:
    ev = rec["events"]
    d: dict = {"wall": wall, "success": rec.get("success"),
               "step": ev["STEP_SUCCESS"] - ev["STEP_START"] if "STEP_SUCCESS" in ev else None,
               "proc_to_step_start": ev.get("STEP_START", 0) - rec["t_proc"],
               "proc_to_imported": rec["t_imported"] - rec["t_proc"]}
    d["resource_init"] = ev.get("RESOURCE_INIT_SUCCESS", 0) - ev.get("RESOURCE_INIT_STARTED", 0)
    if "STEP_SUCCESS" in ev:
        d["step_success_to_process_exit"] = rec["t_proc"] + wall - ev["STEP_SUCCESS"]
    if "t_payload_log" in ev:
        d["step_start_to_payload_log"] = ev["t_payload_log"] - ev["STEP_START"]
    if "stats" not in rec:
        return d
    s, ops = rec["stats"], rec["ops"]
    log = s["command_log"]
    idx = next((i for i, c in enumerate(log) if "sbatch" in c), None)
    d.update(connections=s["connections"], channels=s["channels"], commands=s["commands"],
             sftp_ops=s["sftp_ops"], commands_before_sbatch=idx, job_id=rec.get("job_id"))
    start, success = ev["STEP_START"], ev.get("STEP_SUCCESS")
    sb0 = _first(ops, lambda o: o["kind"] == "cmd" and "sbatch" in o["what"])
    sb1 = _first(ops, lambda o: o["kind"] == "cmd" and "sbatch" in o["what"], "t1")
    running = _first(ops, lambda o: o["kind"] == "cmd" and "squeue" in o["what"] and "|RUNNING|" in o["out"] + "|",
                     "t1")
    squeue_done = _first(ops, lambda o: o["kind"] == "cmd" and "squeue" in o["what"]
                         and not any(x in o["out"] for x in ("|PENDING|", "|RUNNING|", "|CONFIGURING|", "|COMPLETING|")), "t1")
    sacct1 = _first(ops, lambda o: o["kind"] == "cmd" and o["what"].startswith("sacct"), "t1")
    rm0 = _first(ops, lambda o: o["kind"] == "cmd" and o["what"].startswith("rm -rf"))
    rm1 = _first(ops, lambda o: o["kind"] == "cmd" and o["what"].startswith("rm -rf"), "t1")
    first_op = min((o["t0"] for o in ops), default=None)
    end = rec.get("job_end")
    rel = lambda t, ref: None if t is None or ref is None else t - ref
    d["sftp_ops_before_sbatch"] = sum(1 for o in ops if o["kind"] == "sftp" and sb0 is not None and o["t0"] < sb0)
    d["first_remote_op_incl_connect"] = next((o["t1"] - o["t0"] for o in ops), None)
    d["squeue_polls"] = sum(1 for o in ops if o["kind"] == "cmd" and "squeue" in o["what"])
    d["sacct_calls"] = sum(1 for o in ops if o["kind"] == "cmd" and o["what"].startswith("sacct"))
    d["sftp_reads"] = sum(1 for o in ops if o["kind"] == "sftp" and o["what"].startswith("read"))
    d["profile"] = {
        "step_start_to_first_remote_op": rel(first_op, start),
        "step_start_to_sbatch_sent": rel(sb0, start),
        "sbatch_round_trip": rel(sb1, sb0),
        "sbatch_done_to_running_seen": rel(running, sb1),
        "sbatch_done_to_payload_log": rel(ev.get("t_payload_log"), sb1),
        "payload_log_to_payload_end": rel(ev["metadata"].get("t_payload_end"), ev.get("t_payload_log")),
        "payload_end_to_job_end": rel(end, ev["metadata"].get("t_payload_end")),
        "sbatch_done_to_job_end": rel(end, sb1),
        "job_end_to_reader_saw_exit_code": rel(rec.get("reader_saw_exit"), end),
        "job_end_to_squeue_terminal": rel(squeue_done, end),
        "job_end_to_sacct_done": rel(sacct1, end),
        "sacct_done_to_rm_sent": rel(rm0, sacct1),
        "rm_round_trip": rel(rm1, rm0),
        "rm_done_to_step_success": rel(success, rm1),
        "job_end_to_step_success": rel(success, end),
        "step_success_to_process_exit": rel(rec["t_proc"] + wall, success),
    }
    d["sched_launch"] = rel(ev.get("t_payload_log"), sb1)
    d["step_excl_sched_launch"] = None if d["sched_launch"] is None or d["step"] is None else d["step"] - d["sched_launch"]
    d["sbatch_phase"] = None if sb1 is None else sb1 % 1.0
    d["end_noticed_lag"] = rel(sacct1, end)  # the library has the final state (handle done) here
    d["end_to_step_success"] = rel(success, end)
    return d


def derive_floor(rec: dict, wall: float) -> dict:
    t = rec
    sched = t["t_payload_log"] - t["t_sbatch_done"] if "t_payload_log" in t else None
    return {
        "sched_launch": sched, "wall_excl_sched_launch": None if sched is None else wall - sched,
        "sbatch_phase": t["t_sbatch_done"] % 1.0,
        "wall": wall, "connections": 1, "channels": rec["channels"], "commands": rec["commands"],
        "commands_before_sbatch": 0, "job_id": rec["job_id"], "squeue_polls": rec["polls"],
        "final_state": rec.get("final_state"),
        "submit_to_seen_finished": t["t_seen_finished"] - t["t_sbatch_sent"],
        "stage_to_seen_finished": t["t_seen_finished"] - t["t_connected"],  # upload + sbatch + polls
        "connect_to_seen_finished": t["t_seen_finished"] - t["t_imported"],
        "end_noticed_lag": None if not t.get("job_end") else t["t_seen_finished"] - t["job_end"],
        "profile": {
            "proc_to_imported": t["t_imported"] - t["t_proc"],
            "connect": t["t_connected"] - t["t_imported"],
            "stage_sftp_and_shell": t["t_staged"] - t["t_connected"],
            "sbatch_round_trip": t["t_sbatch_done"] - t["t_sbatch_sent"],
            "sbatch_done_to_running_seen": (t["t_running_seen"] - t["t_sbatch_done"]) if "t_running_seen" in t
            else None,
            "sbatch_done_to_payload_log": sched,
            "sbatch_done_to_job_end": None if not t.get("job_end") else t["job_end"] - t["t_sbatch_done"],
            "job_end_to_seen_finished": None if not t.get("job_end") else t["t_seen_finished"] - t["job_end"],
            "seen_finished_to_process_exit": t["t_proc"] + wall - t["t_seen_finished"],
        },
    }


# =============================================================================================== parent
def squeue_rpcs() -> int | None:
    """slurmctld's count of job-info RPCs (what squeue sends), from sdiag on the test cluster."""
    try:
        out = subprocess.run(["sdiag"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(int(line.split("count:")[1].split()[0]) for line in out.splitlines()
               if line.strip().split(" ")[0] in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"))


def run_child(variant: str, env_path: str, tmp: str, sleep: float) -> dict:
    out = os.path.join(tmp, f"{variant}-{uuid.uuid4().hex}.json")
    rpcs_before = squeue_rpcs()
    log = os.path.join(tmp, f"{variant}.log")
    with open(log, "ab") as fh:
        t_proc = time.time()
        p0 = time.perf_counter()
        rc = subprocess.call([sys.executable, __file__, "--child", variant, "--t-proc", repr(t_proc),
                              "--env-path", env_path, "--out", out, "--payload-sleep", repr(sleep)], stdout=fh, stderr=fh, cwd=str(ROOT))
        wall = time.perf_counter() - p0
    if rc != 0 or not os.path.exists(out):
        raise RuntimeError(f"{variant} child failed (exit {rc}); see {log}:\n" + Path(log).read_text()[-3000:])
    raw = json.loads(Path(out).read_text())
    derived = derive_floor(raw, wall) if variant == "floor" else derive_dagster(raw, wall)
    rpcs_after = squeue_rpcs()
    if rpcs_before is not None and rpcs_after is not None:
        derived["squeue_calls_slurmctld"] = rpcs_after - rpcs_before  # whoever sent them (the agent too)
    return {"variant": variant, "raw": raw, **derived}


SLURMCTLD_LOG = "/var/log/slurm/slurmctld.log"


def slurm_own_times(path: str, job_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Per job: (submit, complete) epoch seconds from slurmctld's log lines
    ``[2026-11-25T16:21:30.540] _slurm_rpc_submit_batch_job: JobId=984 ...`` and ``_job_complete: JobId=984 done``."""
    import datetime

    wanted, out, submit = set(job_ids), {}, {}
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if not line.startswith("[") or "JobId=" not in line:
            continue
        job = line.split("JobId=", 1)[1].split()[0]
        if job not in wanted:
            continue
        stamp = datetime.datetime.strptime(line[1:24], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        if "_slurm_rpc_submit_batch_job" in line:
            submit[job] = stamp
        elif "_job_complete" in line and line.rstrip().endswith("done") and job in submit:
            out[job] = (submit[job], stamp)
    return out


def fmt_s(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f} s"


def fmt_n(v):
    return "-" if v is None else (f"{v:g}" if isinstance(v, (int, float)) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="discarded rounds first (default 1)")
    ap.add_argument("--variants", default="local,slurm,floor")
    ap.add_argument("--payload-sleep", type=float, default=0.0,
                    help="payload sleeps this long (silently) between its log line and its metadata; "
                         "results then go to bench/results/step_time-sleepS.json")
    ap.add_argument("--jitter", type=float, default=1.0,
                    help="sleep a random 0..JITTER s before each run (default 1): slurmctld allocates pending "
                         "jobs on a ~1 s tick, so without it the variant order could fix each variant's phase")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", choices=["local", "slurm", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--t-proc", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--env-path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "floor":
        return child_floor(args.t_proc, args.env_path, args.out, args.payload_sleep)
    if args.child:
        return child_dagster(args.child, args.t_proc, args.env_path, args.out, args.payload_sleep)

    load_cluster_env()
    sys.path.insert(0, str(ROOT / "tests"))
    from remote_env import make_pipes_env

    from dagster_slurm import SSHConnectionResource
    from dagster_slurm.agent import transport_for as get_transport

    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    admin = get_transport(ssh.settings())  # the parent's own connection: setup, queue checks, sacct
    env_path = make_pipes_env(admin, ENV_REL)
    admin.mkdir_p(admin.absolute(f"{BENCH_BASE}/floor"))
    variants = args.variants.split(",")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()
    source = {"git_head": head, "src_dirty": bool(dirty), "src_hash_start": src_fingerprint()}
    import random

    rng = random.Random(args.seed)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="step-time-") as tmp:
        for rnd in range(args.warmup + args.runs):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for variant in order:
                others = admin.run("squeue -h | wc -l", check=False).stdout.strip()
                time.sleep(rng.uniform(0, args.jitter))
                r = run_child(variant, env_path, tmp, args.payload_sleep)
                r.update(round=rnd, warmup=rnd < args.warmup, jobs_in_queue_before=int(others or 0))
                results.append(r)
                print(f"round {rnd}{' (warmup)' if r['warmup'] else ''} {variant:5s} wall {r['wall']:.3f} s"
                      + (f"  step {r['step']:.3f} s" if r.get("step") else "")
                      + (f"  submit->seen {r['submit_to_seen_finished']:.3f} s" if variant == "floor" else "")
                      + (f"  lag {r['end_noticed_lag']:.3f} s" if r.get("end_noticed_lag") is not None else "")
                      + (f"  [{r['jobs_in_queue_before']} job(s) in queue before]" if r["jobs_in_queue_before"]
                         else ""), file=sys.stderr, flush=True)
        ids = [r["job_id"] for r in results if r.get("job_id")]
        sacct = {}
        if ids:
            time.sleep(1)
            out = admin.run(f"sacct -P -n -X -o JobID,Submit,Start,End,State -j {','.join(ids)}", check=False).stdout
            for line in out.splitlines():
                jid, submit, start, end, state = line.split("|")
                sacct[jid] = {"submit": submit, "start": start, "end": end, "state": state}
        admin.run(f"rm -rf -- {shlex.quote(admin.absolute(BENCH_BASE + '/floor'))}/* "
                  f"{shlex.quote(admin.absolute(BENCH_BASE + '/runs'))}", check=False)
    own = slurm_own_times(SLURMCTLD_LOG, [str(r.get("job_id")) for r in results if r.get("job_id")])
    for r in results:
        times = own.get(str(r.get("job_id") or ""))
        if times:
            r["slurm_own"] = times[1] - times[0]  # slurmctld: submit RPC -> _job_complete, ms resolution
            ours = r.get("step") if r["variant"] != "floor" else r.get("stage_to_seen_finished")
            r["overhead_beyond_slurm"] = None if ours is None else ours - r["slurm_own"]
    for r in results:
        acct = sacct.get(r.get("job_id") or "")
        if acct:
            r["sacct"] = acct
            end = time.mktime(time.strptime(acct["end"], "%Y-%m-%dT%H:%M:%S")) if "T" in acct["end"] else None
            job_end = r["raw"].get("job_end")
            r["sacct_end_minus_exit_mtime"] = None if end is None or job_end is None else end - job_end

    source["src_hash_end"] = src_fingerprint()
    if source["src_hash_end"] != source["src_hash_start"]:
        print("WARNING: src/ changed while the benchmark ran; runs may mix library versions", file=sys.stderr)
    measured = [r for r in results if not r["warmup"]]
    by = {v: [r for r in measured if r["variant"] == v] for v in variants}
    summary = {}
    for v, rs in by.items():
        keys = {k for r in rs for k, val in r.items() if isinstance(val, (int, float)) and not isinstance(val, bool)}
        s = {k: med([r.get(k) for r in rs]) for k in sorted(keys) if k not in ("round",)}
        s["profile"] = {k: med([r.get("profile", {}).get(k) for r in rs])
                        for k in (rs[0].get("profile") or {})} if rs else {}
        s["n"] = len(rs)
        summary[v] = s

    names = {"local": "dagster-slurm, local mode", "slurm": "dagster-slurm, slurm mode",
             "floor": "tight floor: SFTP + sbatch, squeue every 0.1 s, one connection"}
    lines = [f"Library at {source['git_head']}{' + uncommitted src changes' if source['src_dirty'] else ''} "
             f"(src hash {source['src_hash_start']}"
             + ("" if source["src_hash_end"] == source["src_hash_start"] else " -> CHANGED DURING THE RUN") + ").",
             f"Medians of {args.runs} runs (interleaved; {args.warmup} warm-up round(s) discarded)"
             + (f"; payload sleeps {args.payload_sleep:g} s" if args.payload_sleep else "") + ".", "",
             ("| variant | overhead beyond Slurm's own submit -> complete | wall (process start to exit) "
              "| step (STEP_START -> STEP_SUCCESS) | squeue calls (slurmctld) | SSH connections "
             "| SSH channels | remote commands | commands before sbatch | end-noticed lag |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        s = summary[v]
        step = fmt_s(s.get("step")) if v != "floor" else f"({fmt_s(s.get('submit_to_seen_finished'))} submit -> seen)"
        remote = v != "local"
        lines.append(f"| {names[v]} | {fmt_s(s.get('overhead_beyond_slurm'), 3) if remote else '-'} "
                     f"| {fmt_s(s.get('wall'))} | {step} | {fmt_n(s.get('squeue_calls_slurmctld')) if remote else '-'} | "
                     + " | ".join(fmt_n(s.get(k)) if remote else "-" for k in
                                  ("connections", "channels", "commands", "commands_before_sbatch"))
                     + f" | {fmt_s(s.get('end_noticed_lag'), 3) if remote else '-'} |")
    ratios = {}
    if "slurm" in summary and "floor" in summary and summary["slurm"].get("overhead_beyond_slurm") is not None \
            and summary["floor"].get("overhead_beyond_slurm") is not None:
        ratios["overhead_minus_floor_overhead"] = (summary["slurm"]["overhead_beyond_slurm"]
                                                   - summary["floor"]["overhead_beyond_slurm"])
        lines += ["", f"- overhead beyond Slurm's own time, slurm mode minus floor (medians): "
                      f"**{ratios['overhead_minus_floor_overhead']:+.3f} s** (target <= +0.1 s). Floor: upload + "
                      "sbatch + squeue every 0.1 s until the job is gone, minus slurmctld's submit -> complete; "
                      "slurm mode: STEP_START -> STEP_SUCCESS minus the same."]
    if "slurm" in summary and "floor" in summary and summary["slurm"].get("step"):
        sl, fl = summary["slurm"], summary["floor"]
        ratios = {"slurm_step_over_floor_wall": sl["step"] / fl["wall"],
                  "slurm_step_over_floor_connect_to_seen": sl["step"] / fl["connect_to_seen_finished"],
                  "slurm_wall_over_floor_wall": sl["wall"] / fl["wall"]}
        if sl.get("step_excl_sched_launch") is not None and fl.get("wall_excl_sched_launch") is not None:
            pooled = med([r.get("sched_launch") for r in measured if r["variant"] in ("slurm", "floor")])
            ratios["sched_launch_pooled_median"] = pooled
            ratios["slurm_step_over_floor_wall_at_equal_slurm_wait"] = (
                (sl["step_excl_sched_launch"] + pooled) / (fl["wall_excl_sched_launch"] + pooled))
        if "local" in summary and summary["local"].get("step"):
            ratios["slurm_step_minus_local_step"] = sl["step"] - summary["local"]["step"]
        lines += ["", f"- slurm step / floor wall: **{ratios['slurm_step_over_floor_wall']:.2f}x** (target <= 1.3x)",
                  (f"- slurm step / floor connect->seen-finished ({fl['connect_to_seen_finished']:.2f} s): "
                  f"{ratios['slurm_step_over_floor_connect_to_seen']:.2f}x"),
                  f"- slurm wall / floor wall: {ratios['slurm_wall_over_floor_wall']:.2f}x"]
        if "sched_launch_pooled_median" in ratios:
            lines += [
                (f"- Slurm's own share, sbatch returned -> payload started (scheduler tick + launch): slurm mode "
                f"{fmt_s(sl.get('sched_launch'), 3)}, floor {fmt_s(fl.get('sched_launch'), 3)} (medians)"),
                (f"- without it: slurm step {fmt_s(sl.get('step_excl_sched_launch'), 3)}, floor wall "
                f"{fmt_s(fl.get('wall_excl_sched_launch'), 3)}; at the pooled median Slurm share "
                f"({ratios['sched_launch_pooled_median']:.3f} s) slurm step / floor wall = "
                f"**{ratios['slurm_step_over_floor_wall_at_equal_slurm_wait']:.2f}x**")]
    if "slurm" in summary:
        lines += ["", "Where the slurm-mode step goes (medians, seconds):", ""]
        lines += [f"- {k}: {fmt_s(v, 3)}" for k, v in summary["slurm"]["profile"].items()]
        lines += [(f"- first remote op (SFTP realpath, includes the connect): "
                  f"{fmt_s(summary['slurm'].get('first_remote_op_incl_connect'), 3)}; SFTP ops before sbatch: "
                  f"{fmt_n(summary['slurm'].get('sftp_ops_before_sbatch'))}")]
        lines += [(f"- squeue polls / sacct calls / SFTP reads per run: {fmt_n(summary['slurm'].get('squeue_polls'))}"
                  f" / {fmt_n(summary['slurm'].get('sacct_calls'))} / {fmt_n(summary['slurm'].get('sftp_reads'))}")]
        sample = next((r for r in measured if r["variant"] == "slurm"), None)
        if sample:
            lines += ["", "Remote commands of one slurm-mode run, in order:", ""]
            lines += [f"    {c[:150]}" for c in sample["raw"]["stats"]["command_log"]]
    dag = [v for v in ("local", "slurm") if v in summary]
    if dag:
        lines += ["", "Dagster-side times (medians; outside the library's control except resource init):", ""]
        for k in ("proc_to_imported", "proc_to_step_start", "resource_init", "step_success_to_process_exit"):
            lines.append(f"- {k}: " + ", ".join(f"{v} {fmt_s(summary[v].get(k), 3)}" for v in dag))
    if "floor" in summary:
        lines += ["", "Floor profile (medians, seconds):", ""]
        lines += [f"- {k}: {fmt_s(v, 3)}" for k, v in summary["floor"]["profile"].items()]
    table = "\n".join(lines)
    print(table)
    results_file = RESULTS if not args.payload_sleep else RESULTS.with_name(
        f"step_time-sleep{args.payload_sleep:g}.json")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({"args": vars(args), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "source": source, "summary": summary, "ratios": ratios, "runs": results, "table": table},
                                  indent=1, default=str))
    print(f"\nraw results: {results_file.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
