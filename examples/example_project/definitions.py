"""Assets whose payloads run unchanged in local mode and as Slurm jobs.

Run with `DAGSTER_DEPLOYMENT=development dagster dev -m example_project.definitions` (from examples/),
or through ../scripts/example.sh.
"""

import os
from pathlib import Path

import dagster as dg

from dagster_slurm import ComputeResource, SlurmRunConfig
from example_project.resources import get_resources

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def payload(name: str) -> str:
    return str(SCRIPTS / name)


@dg.asset(description="Reports summary metadata from its payload.")
def numbers_summary(context: dg.AssetExecutionContext, compute: ComputeResource, config: SlurmRunConfig):
    return compute.run(context=context, payload_path=payload("summary.py"), extras={"n": 1000},
                       config=config).get_results()


@dg.asset(
    deps=[numbers_summary],
    check_specs=[dg.AssetCheckSpec("no_negative_values", asset="validated_numbers")],
    # per-asset Slurm request: the second partition, 2 CPUs
    metadata={"slurm_resources": {"partition": os.environ.get("EXAMPLE_SECOND_PARTITION", "batch"), "cpus": 2}}
    if os.environ.get("DAGSTER_DEPLOYMENT", "development") != "development" else None,
)
def validated_numbers(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(context=context, payload_path=payload("quality.py")).get_results()


# An asset may use a pre-deployed environment while the others are packed on demand.
_PRE_DEPLOYED = os.environ.get("EXAMPLE_PRE_DEPLOYED_ENV")


@dg.asset(
    partitions_def=dg.StaticPartitionsDefinition(["2026-11-23", "2026-11-24"]),
    metadata={"slurm_pre_deployed_env_path": _PRE_DEPLOYED} if _PRE_DEPLOYED else None,
)
def daily_counts(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(context=context, payload_path=payload("partitioned.py")).get_results()


@dg.asset(description="Its payload fails on purpose: the run shows Slurm's state, exit code and stderr.")
def broken_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(context=context, payload_path=payload("fails.py")).get_results()


main_job = dg.define_asset_job("main_job", selection=[numbers_summary, validated_numbers])

defs = dg.Definitions(
    assets=[numbers_summary, validated_numbers, daily_counts, broken_asset],
    jobs=[main_job],
    resources=get_resources(),
)
