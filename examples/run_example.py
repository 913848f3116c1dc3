"""Run the example pipeline end to end and print what Dagster recorded.

    python examples/run_example.py --mode slurm   # on the cluster named by SLURM_EDGE_NODE_* (staging)
    python examples/run_example.py --mode local   # in local subprocesses (development)

In slurm mode it first deploys the payload environment once with `dagster-slurm deploy` and uses that
pre-deployed copy for the partitioned asset, while the other assets pack examples/uv.lock on demand:
one pipeline, both kinds of environment.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def deploy() -> str:
    proc = subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "deploy", "--project", str(HERE),
                           "--version", "example", "--metadata-out", os.devnull],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"deploy failed:\n{proc.stderr}")
    return next(line.split("=", 1)[1] for line in proc.stdout.splitlines()
                if line.startswith("CI_DEPLOYED_ENVIRONMENT_PATH="))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["local", "slurm"], required=True)
    args = parser.parse_args()
    if args.mode == "slurm":
        os.environ["DAGSTER_DEPLOYMENT"] = "staging_docker"
        os.environ["EXAMPLE_PRE_DEPLOYED_ENV"] = deploy()
        print(f"Deployed the payload environment to {os.environ['EXAMPLE_PRE_DEPLOYED_ENV']}")
    else:
        os.environ["DAGSTER_DEPLOYMENT"] = "development"
    sys.path.insert(0, str(HERE))
    import dagster as dg
    from example_project.definitions import broken_asset, daily_counts, defs

    instance = dg.DagsterInstance.ephemeral()
    rows, ok = [], True

    def record(result, expect_success=True):
        nonlocal ok
        ok &= result.success == expect_success
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            meta = {k: v.value for k, v in mat.metadata.items()}
            if "slurm_env_cache_hit" in meta:
                env = "packed env, cache " + ("hit" if meta["slurm_env_cache_hit"] else "miss")
            else:
                env = "pre-deployed env" if "slurm_environment" in meta else "local"
            rows.append((mat.asset_key.to_user_string() + (f"[{mat.partition}]" if mat.partition else ""),
                         "materialized", meta.get("slurm_job_id", "-"),
                         {"env": env, **{k: v for k, v in meta.items() if not k.startswith("slurm_")}}))
        for check in result.get_asset_check_evaluations():
            rows.append((f"{check.asset_key.to_user_string()}:{check.check_name}",
                         "check passed" if check.passed else "check FAILED", "-", {}))
        for failure in result.get_step_failure_events():
            message = failure.step_failure_data.error.message.strip().splitlines()
            rows.append((failure.step_key, "failed" + (" (expected)" if not expect_success else ""), "-",
                         {"error": " / ".join(message[:2])[:200]}))

    started = time.monotonic()
    job = defs.resolve_job_def("main_job")
    record(job.execute_in_process(instance=instance, raise_on_error=False))
    for key in daily_counts.partitions_def.get_partition_keys():
        record(dg.materialize([daily_counts], resources=defs.resources, partition_key=key, instance=instance,
                              raise_on_error=False))
    record(dg.materialize([broken_asset], resources=defs.resources, instance=instance, raise_on_error=False),
           expect_success=False)

    print(f"\nExample pipeline ({args.mode} mode) finished in {time.monotonic() - started:.1f} s:\n")
    for name, status, job_id, meta in rows:
        print(f"  {name:<42} {status:<20} slurm job {job_id:<6} {meta}")
    print("\nAll assets behaved as expected." if ok else "\nSomething did not behave as expected.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
