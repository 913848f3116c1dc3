"""Local mode: the same call runs the payload in a subprocess here, with Pipes, no SSH."""

import dagster as dg
import pytest

from dagster_slurm import ComputeResource

PAYLOADS = __import__("pathlib").Path(__file__).resolve().parents[1] / "payloads"


def _asset(payload, **kw):
    @dg.asset(name="local_asset", check_specs=[dg.AssetCheckSpec("positive", asset="local_asset")]
              if kw.pop("check", False) else None)
    def local_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload), **kw).get_results()

    return local_asset


def _run(asset):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([asset], resources={"compute": ComputeResource(mode="local")}, instance=instance,
                            raise_on_error=False)
    return result, [e.user_message for e in instance.all_logs(result.run_id)]


def test_local_run_reports_logs_metadata_and_checks(capfd):
    result, logs = _run(_asset(PAYLOADS / "report.py", extras={"foo": 5}, extra_env={"K": "local"}, check=True))
    assert result.success
    meta = result.asset_materializations_for_node("local_asset")[0].metadata
    assert (meta["foo"].value, meta["env_k"].value) == (5, "local")
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [("positive", True)]
    assert "hello from local" in logs
    out, err = capfd.readouterr()
    assert "line on stdout" in out and "line on stderr" in err


def test_local_messages_complete_and_ordered():
    result, logs = _run(_asset(PAYLOADS / "many_logs.py", extras={"n": 200}))
    assert result.success
    assert [m for m in logs if m.startswith("msg ")] == [f"msg {i}" for i in range(200)]


@pytest.mark.parametrize("payload, expected", [
    ("fails.py", "exited with status 3"),
    ("no_pipes.py", "open_dagster_pipes()"),
    ("does_not_exist.py", "does not exist"),
])
def test_local_failures_are_clear(payload, expected):
    result, _ = _run(_asset(PAYLOADS / payload))
    assert not result.success
    assert expected in result.get_step_failure_events()[0].step_failure_data.error.message


DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-02-01")


def _range_asset(**extras):
    @dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
    def daily(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(PAYLOADS / "partition.py"), extras=extras).get_results()

    return daily


def _run_range(asset, n, **compute_kw):
    keys = DAYS.get_partition_keys()[:n]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([asset], resources={"compute": ComputeResource(mode="local", **compute_kw)},
                            instance=instance, raise_on_error=False,
                            tags={"dagster/asset_partition_range_start": keys[0],
                                  "dagster/asset_partition_range_end": keys[-1]})
    events = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    mats = {e.asset_materialization.partition: e.asset_materialization.metadata for e in events}
    return result, mats, keys, [e.user_message for e in instance.all_logs(result.run_id)]


def test_local_range_runs_one_task_per_partition():
    result, mats, keys, logs = _run_range(_range_asset(), 5, max_concurrent_tasks=2)
    assert result.success
    assert sorted(mats) == keys
    for key, meta in mats.items():
        assert meta["key"].value == key and meta["window_start"].value.startswith(key)
        assert meta["partitions_succeeded"].value == 5
    assert f"[{keys[2]}] working on {keys[2]}" in logs


def test_local_range_with_failures_records_the_others_and_names_the_failed():
    keys = DAYS.get_partition_keys()[:4]
    result, mats, _, _ = _run_range(_range_asset(fail=[keys[1]]), 4)
    assert not result.success
    assert sorted(mats) == [keys[0], keys[2], keys[3]]
    error = result.get_step_failure_events()[0].step_failure_data.error.message
    assert f"1 of 4 partitions failed: {keys[1]}\n- {keys[1]} (job local, exit status 3)\n" in error
    assert "is broken" not in error and "SystemExit" not in error  # stderr once: in the metadata
    meta = result.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata
    assert meta["failed_partitions"].value == [keys[1]] and meta["partitions_succeeded"].value == 3
    assert meta["slurm_stderr_tails"].value == f"**{keys[1]}**\n\n```\n{keys[1]} is broken\n```"


def test_local_map_gathers_items():
    @dg.asset
    def sweep(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.map(context, PAYLOADS / "partition.py", items=[1, 2, 3]).get_results()

    result = dg.materialize([sweep], resources={"compute": ComputeResource(mode="local")})
    items = result.asset_materializations_for_node("sweep")[0].metadata["items"].value
    assert [i["metadata"]["key"] for i in items] == ["1", "2", "3"]


def test_map_refuses_items_that_are_not_json():
    @dg.asset
    def sweep(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.map(context, PAYLOADS / "partition.py", items=[object()]).get_results()

    with pytest.raises(Exception, match="items must be JSON values"):
        dg.materialize([sweep], resources={"compute": ComputeResource(mode="local")})


def test_no_preview_warning_about_writer_counts():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = _run(_asset(PAYLOADS / "report.py", extras={"foo": 1}, check=True))
        _run_range(_range_asset(), 2)
    assert result.success
    assert not [w for w in caught if "expected_writer_count" in str(w.message)]


@pytest.mark.parametrize("allocation", [True, {"cpus": 2, "scope": "named", "name": "nightly"}])
def test_local_mode_runs_an_asset_that_asks_for_an_allocation_unchanged(allocation):
    result, logs = _run(_asset(PAYLOADS / "report.py", extras={"foo": 1}, check=True, allocation=allocation))
    assert result.success, logs[-5:]
    assert result.asset_materializations_for_node("local_asset")[0].metadata["foo"].value == 1
