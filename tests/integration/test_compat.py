"""Call forms of the other dagster-slurm project, as its users write them (our own tests, no code of
theirs): an asset check that runs a payload, in local and in slurm mode."""

import dagster as dg
import pytest

from dagster_slurm import ComputeResource


def _check_defs(payloads, rows: int):
    @dg.asset
    def table():
        return None

    @dg.asset_check(asset=table)
    def rows_positive(context: dg.AssetCheckExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "check.py"),
                           extras={"asset": "table", "rows": rows}).get_asset_check_result()

    return [table, rows_positive]


def _checks(defs, compute):
    result = dg.materialize(defs, resources={"compute": compute}, raise_on_error=False)
    assert result.success
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


@pytest.mark.parametrize("rows", [3, 0])
def test_asset_check_local(payloads, rows):
    checks = _checks(_check_defs(payloads, rows), ComputeResource(mode="local"))
    assert checks["rows_positive"].passed is (rows > 0)
    assert checks["rows_positive"].metadata["rows"].value == rows


@pytest.mark.cluster
def test_asset_check_on_slurm(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    checks = _checks(_check_defs(payloads, 0), compute)
    assert checks["rows_positive"].passed is False
    assert checks["rows_positive"].metadata["rows"].value == 0
    assert int(checks["rows_positive"].metadata["slurm_job_id"].value) > 0
