"""slurm_executor: Dagster's multiprocess executor, forkserver with preloaded modules; a real run with it."""

import dagster as dg
import pytest

from dagster_slurm import ConfigurationError, slurm_executor


@dg.asset
def one() -> int:
    return 1


@dg.asset
def two(one: int) -> int:
    return one + 1


def test_slurm_executor_runs_a_job_in_forked_step_processes(tmp_path):
    executor = slurm_executor(4, preload_modules=["json"], retries={"disabled": {}})  # extra config merged
    assert executor.name == "slurm_executor"
    job = dg.define_asset_job("j", executor_def=executor)
    defs = dg.Definitions(assets=[one, two], jobs=[job])
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(dg.reconstructable(_job), instance=instance)
        assert result.success
        kinds = {e.dagster_event.event_type_value for e in instance.all_logs(result.run_id) if e.dagster_event}
        assert "STEP_WORKER_STARTING" in kinds  # each step in a process of its own
    assert defs.resolve_job_def("j").executor_def.name == "slurm_executor"


def _job():
    return dg.Definitions(assets=[one, two], jobs=[dg.define_asset_job("j", executor_def=slurm_executor(2))]
                          ).resolve_job_def("j")


@pytest.mark.parametrize("bad, words", [(0, "max_concurrent=0"), (True, "max_concurrent=True")])
def test_slurm_executor_refuses_bad_settings(bad, words):
    with pytest.raises(ConfigurationError, match=words):
        slurm_executor(bad)
    with pytest.raises(ConfigurationError, match="preload_modules"):
        slurm_executor(2, preload_modules="my.defs")
