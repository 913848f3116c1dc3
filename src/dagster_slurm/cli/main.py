"""``dagster-slurm`` console script."""

from __future__ import annotations

import argparse
import os
import sys

from dagster_slurm.agent.protocol import AgentUnavailable
from dagster_slurm.errors import DagsterSlurmError


def _duration(text: str) -> float:
    """argparse type: checked before anything connects, so a typo is a one-line usage error."""
    from dagster_slurm.packaging.inventory import parse_duration_spec

    try:
        return parse_duration_spec(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number with s, m, h, d or w (e.g. 7d)") from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number >= 0")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagster-slurm",
        description="Deploy payload environments to a Slurm cluster, manage its environment cache and run folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    deploy = sub.add_parser("deploy", help="Pack, upload and unpack the environment to a versioned path, "
                                           "upload scripts/, write deployment_metadata.json.")
    deploy.add_argument("--project", default=".", help="Project folder (lock file found from here upwards).")
    deploy.add_argument("--lockfile", help="Explicit pixi.lock or uv.lock.")
    deploy.add_argument("--version", help="Deployment version. Default: the project's git commit.")
    deploy.add_argument("--platform", help="Target platform, e.g. linux-64. Default: ask the edge node.")
    deploy.add_argument("--packer", default="auto", choices=["auto", "pixi", "uv"])
    deploy.add_argument("--pack-cmd", help="pixi-pack command (placeholders {platform} {output} {project}).")
    deploy.add_argument("--remote-python", default="python3", help="Cluster interpreter for the uv packer.")
    deploy.add_argument("--python-version", help="Python version the uv packer resolves for.")
    deploy.add_argument("--scripts", default="scripts", help="Payload folder to upload (relative to --project).")
    deploy.add_argument("--force", action="store_true", help="Rebuild even if this version is deployed.")
    deploy.add_argument("--metadata-out", default="deployment_metadata.json", help="Local copy of the metadata.")

    env = sub.add_parser("env", help="The environment cache on the cluster.")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    env_sub.add_parser("list", help="List cached and deployed environments.")
    gc = env_sub.add_parser("gc", help="Delete cached environments no queued or running job uses.")
    gc.add_argument("--keep", type=_count, default=3, help="Always keep the N most recent environments.")
    gc.add_argument("--older-than", type=_duration, default="7d",
                    help="Only delete environments older than this (e.g. 12h, 7d).")
    gc.add_argument("--dry-run", action="store_true", help="Say what would be deleted, delete nothing.")

    runs = sub.add_parser("runs", help="Run folders on the cluster (job scripts and logs).")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_gc = runs_sub.add_parser("gc", help="Delete run folders untouched for a while whose jobs are over "
                                             "(failed runs keep theirs for debugging until then).")
    runs_gc.add_argument("--older-than", type=_duration, default="7d",
                         help="Only delete run folders untouched for this long (e.g. 12h, 7d).")
    runs_gc.add_argument("--dry-run", action="store_true", help="Say what would be deleted, delete nothing.")

    login = sub.add_parser("login", help="Log in once through the connection agent, answering the server's "
                                         "prompts (one-time code, password, key passphrase) here; later runs "
                                         "on this machine reuse that login.")
    login.add_argument("--idle-timeout", type=_duration, default=None,
                       help="How long the agent stays without requests (e.g. 8h). Default: "
                            "SLURM_EDGE_NODE_AGENT_IDLE_TIMEOUT or 10 minutes.")
    login.add_argument("--force", action="store_true", help="Log in again even if an agent holds a login.")

    agent = sub.add_parser("agent", help="The connection agents of this user on this machine.")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    agent_sub.add_parser("status", help="Which agents run, since when, their clients, jobs and logins.")
    agent_sub.add_parser("stop", help="Stop every agent of this user (running jobs are not affected).")
    allocations = agent_sub.add_parser("allocations", help="The shared allocations (SlurmAllocation) held on the "
                                       "cluster: their jobs, age, idle time and steps.")
    allocations.add_argument("--all", action="store_true", help="Also list allocations that have ended.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "deploy":
            from dagster_slurm.cli.deploy import run_deploy

            run_deploy(args)
        elif args.command in ("login", "agent"):
            from dagster_slurm.cli.agent import run_agent, run_login

            if args.command == "agent" and args.agent_command == "allocations":
                from dagster_slurm.cli.allocations import run_allocations

                run_allocations(args)
            else:
                run_login(args) if args.command == "login" else run_agent(args)
        elif args.command == "runs":
            from dagster_slurm.cli.runs import run_runs_gc

            run_runs_gc(args)
        else:
            from dagster_slurm.cli.envs import run_gc, run_list

            run_list(args) if args.env_command == "list" else run_gc(args)
    except AgentUnavailable as exc:
        print(f"dagster-slurm: error: the connection agent: {exc}", file=sys.stderr)
        return 2
    except DagsterSlurmError as exc:
        print(f"dagster-slurm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dagster-slurm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, the traceback only on request
        if os.environ.get("DAGSTER_SLURM_DEBUG"):
            raise
        print(f"dagster-slurm: error: {type(exc).__name__}: {exc} (set DAGSTER_SLURM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
