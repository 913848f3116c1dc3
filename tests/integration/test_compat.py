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


def _multi(payloads, **run_kw):
    @dg.multi_asset(specs=[dg.AssetSpec("left"), dg.AssetSpec("right")])
    def both(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "reads_file.py"), **run_kw).get_results()

    return both


def _compat_run_kw(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "settings.txt").write_text("from-extra-file\n")
    return {"extras": {"file": "conf/settings.txt"}, "extra_files": ["conf/settings.txt"],
            "extra_slurm_opts": {"cpus_per_task": 2, "time": "00:05:00", "mem": "200M"}}


def test_multi_asset_with_extra_files_and_extra_slurm_opts_local(payloads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dg.materialize([_multi(payloads, **_compat_run_kw(tmp_path))],
                            resources={"compute": ComputeResource(mode="local")})
    mats = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("both")}
    assert sorted(mats) == ["left", "right"]
    assert all(meta["content"].value == "from-extra-file" for meta in mats.values())


@pytest.mark.cluster
def test_multi_asset_with_extra_files_and_extra_slurm_opts_on_slurm(slurm, pipes_env, payloads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    run_kw = _compat_run_kw(tmp_path)
    run_kw["extra_slurm_opts"]["partition"] = "batch"
    result = dg.materialize([_multi(payloads, **run_kw)], resources={"compute": compute})
    mats = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("both")}
    assert sorted(mats) == ["left", "right"]
    for meta in mats.values():
        assert meta["content"].value == "from-extra-file" and meta["cpus"].value == "2"
        # sacct fills a job's partition ~2 s after its end; the one asked for stands in until then
        assert (meta["slurm_partition"].value, meta["partition"].value) == ("batch", "batch"), dict(meta)


@pytest.mark.cluster
def test_their_metadata_keys_empty_partition_and_home_base(ssh, pipes_env, payloads, transport):
    from dagster_slurm import SlurmQueueConfig, SlurmResource

    remote = f"{transport.absolute('dagster-slurm-tests')}/compat-report.py"
    transport.write_bytes(remote, (payloads / "report.py").read_bytes(), mode=0o600)
    slurm = SlurmResource(ssh=ssh, remote_base="$HOME/dagster-slurm-tests",
                          queue=SlurmQueueConfig(partition="", mem="256M", time_limit="00:05:00"),
                          job_url_template="http://127.0.0.1:9/jobs/{cluster}/{job_id}")

    @dg.asset(metadata={"skip_slurm_payload_upload": True, "slurm_payload_path": remote},
              check_specs=[dg.AssetCheckSpec("positive", asset="reporter")])
    def reporter(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path="not-uploaded.py", extras={"foo": 1}).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    result = dg.materialize([reporter], resources={"compute": compute})
    meta = result.asset_materializations_for_node("reporter")[0].metadata
    assert meta["foo"].value == 1 and meta["partition"].value == "debug"  # the cluster's default partition
    cluster = transport.run("scontrol show config | sed -n 's/^ClusterName *= *//p'").stdout.strip()
    assert meta["slurm_job_url"].value == f"http://127.0.0.1:9/jobs/{cluster}/{meta['slurm_job_id'].value}"
    assert transport.stat_size(transport.absolute("$HOME")) is not None
    assert transport.listdir(transport.absolute("dagster-slurm-tests")) is not None
    assert transport.stat_size(transport.absolute("dagster-slurm-tests") + "/$HOME") is None  # no literal $HOME
