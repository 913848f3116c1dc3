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
