"""``dagster-slurm`` console script."""

from __future__ import annotations

import argparse
import sys

from dagster_slurm.errors import DagsterSlurmError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagster-slurm",
        description="Deploy payload environments to a Slurm cluster and manage its environment cache.",
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
    gc.add_argument("--keep", type=int, default=3, help="Always keep the N most recent environments.")
    gc.add_argument("--older-than", default="7d", help="Only delete environments older than this (e.g. 12h, 7d).")
    gc.add_argument("--dry-run", action="store_true", help="Say what would be deleted, delete nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "deploy":
            from dagster_slurm.cli.deploy import run_deploy

            run_deploy(args)
        else:
            from dagster_slurm.cli.envs import run_gc, run_list

            run_list(args) if args.env_command == "list" else run_gc(args)
    except DagsterSlurmError as exc:
        print(f"dagster-slurm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
