"""The snippets of the environment-packaging page, pasted into assets, on the real test cluster.

pixi and pixi-pack cannot be installed here: ``pixi-pack`` and ``pixi run`` are the stand-ins of
tests/standins (genuine conda packages, the same CLI and unpack contract), put first on PATH.
"""

import os
import uuid

import dagster as dg
import pytest
from remote_env import make_pipes_env

from dagster_slurm import BashLauncher, ComputeResource, SlurmQueueConfig, SlurmResource, SlurmRunConfig
from tests.standins.make_conda_packages import make_custom_package
from tests.standins.pixi_project import build_pixi_project_in_subprocess, write_pixi_pack_executables

pytestmark = pytest.mark.cluster

PIXI_TASKS = """\
[tasks]
pack-gpu = "pixi-pack --environment gpu --platform linux-64 --create-executable -o gpu.sh"
pack-cpu = "pixi-pack --environment default --platform linux-64 --create-executable -o cpu.sh"
"""


@pytest.fixture
def pixi_project(tmp_path, monkeypatch):
    project = build_pixi_project_in_subprocess(tmp_path / "pixi", "1.0")
    # the spec's tasks; in pixi.toml, as the workspace is there (pixi then ignores pyproject.toml's [tool.pixi])
    with open(project / "pixi.toml", "a") as fh:
        fh.write("\n" + PIXI_TASKS)
    write_pixi_pack_executables(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(project)  # the lock file is found from the working directory upwards
    return project


@pytest.fixture
def slurm_resource(ssh, transport):
    base = transport.absolute(f"dagster-slurm-tests/spec-{uuid.uuid4().hex[:8]}")
    return SlurmResource(ssh=ssh, remote_base=base, queue=SlurmQueueConfig(mem="256M", time_limit="00:05:00"))


def _meta(result, name):
    return {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}


def _materialize(assets, compute, **kw):
    result = dg.materialize(assets, resources={"compute": compute}, raise_on_error=False, **kw)
    assert result.success, [e.step_failure_data.error.message for e in result.get_step_failure_events()]
    return result


def test_pack_on_demand(pixi_project, slurm_resource, payloads):
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_resource,
        default_launcher=BashLauncher(),
        auto_detect_platform=True,
    )

    @dg.asset
    def my_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "env_report.py")).get_results()

    first = _meta(_materialize([my_asset], compute), "my_asset")
    assert first["example_lib"] == "1.0/cpu"
    assert first["slurm_env_cache_hit"] is False and first["slurm_env_packer"] == "pixi-pack"
    second = _meta(_materialize([my_asset], compute), "my_asset")
    assert second["slurm_env_cache_hit"] is True and second["slurm_environment"] == first["slurm_environment"]


def test_pack_platform_override_and_debug_mode(pixi_project, slurm_resource, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm_resource, pack_platform="linux-64", debug_mode=True)

    @dg.asset
    def my_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "env_report.py")).get_results()

    result = _materialize([my_asset], compute)
    meta = _meta(result, "my_asset")
    assert meta["example_lib"] == "1.0/cpu"
    # debug_mode keeps the remote run folder (job script, logs)
    run_dir = transport.run(f"ls -d {slurm_resource.remote_base}/runs/{result.run_id}/my_asset-*/0").stdout.strip()
    assert transport.stat_size(f"{run_dir}/job.sh") is not None
    assert transport.stat_size(f"{run_dir}/stdout.log") is not None


def test_cache_inject_globs(pixi_project, slurm_resource, payloads):
    shared_dist = pixi_project / "projects/dagster-slurm-example-shared/dist"
    workload_dist = pixi_project / "projects/workload/dist"

    def build(version: str, which: str):
        folder, name = (shared_dist, "shared-lib") if which == "shared" else (workload_dist, "workload-lib")
        module = name.replace("-", "_")
        for old in folder.glob("*.conda"):
            old.unlink()
        return make_custom_package(folder, name, "1.0", {
            f"lib/python3.11/site-packages/{module}/__init__.py": f"VERSION = {version!r}\n"}, fmt=".conda")

    build("1", "shared")
    build("1", "workload")
    pack_cmd = ["pixi-pack", "--environment", "default", "--platform", "{platform}", "--create-executable",
                "--inject=projects/dagster-slurm-example-shared/dist/shared-lib-1.0-0.conda",
                "--inject=projects/workload/dist/workload-lib-1.0-0.conda", "-o", "{output}"]
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_resource,
        default_launcher=BashLauncher(),
        # Only these inject patterns affect the cache key
        cache_inject_globs=[
            "../dist/dagster_slurm-*-py3-none-any.whl",
            "projects/dagster-slurm-example-shared/dist/*.conda",
        ],
        pack_cmd=pack_cmd,
    )

    @dg.asset
    def my_asset(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payloads / "env_report.py")).get_results()

    first = _meta(_materialize([my_asset], compute), "my_asset")
    assert (first["shared_lib"], first["workload_lib"], first["slurm_env_cache_hit"]) == ("1/", "1/", False)
    build("2", "workload")  # excluded from the key: reuse the cached environment
    second = _meta(_materialize([my_asset], compute), "my_asset")
    assert second["slurm_env_cache_hit"] is True and second["workload_lib"] == "1/"
    build("2", "shared")  # matched by a glob: re-pack and upload
    third = _meta(_materialize([my_asset], compute), "my_asset")
    assert third["slurm_env_cache_hit"] is False
    assert (third["shared_lib"], third["workload_lib"]) == ("2/", "2/")


def test_slurm_run_config_from_the_launchpad(pixi_project, slurm_resource, payloads, tmp_path):
    import shutil

    shutil.copy(payloads / "env_report.py", tmp_path / "script.py")

    @dg.asset
    def my_asset(
        context: dg.AssetExecutionContext,
        compute: ComputeResource,
        config: SlurmRunConfig,  # Configurable via launchpad
    ):
        return compute.run(
            context=context,
            payload_path=str(tmp_path / "script.py"),
            config=config,
        ).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm_resource)
    assert _meta(_materialize([my_asset], compute), "my_asset")["slurm_env_cache_hit"] is False
    assert _meta(_materialize([my_asset], compute), "my_asset")["slurm_env_cache_hit"] is True
    forced = _materialize([my_asset], compute, run_config={"ops": {"my_asset": {"config": {"force_env_push": True}}}})
    assert _meta(forced, "my_asset")["slurm_env_cache_hit"] is False


def test_per_asset_pack_commands_and_pre_deployed_paths_mix(pixi_project, slurm_resource, payloads, transport):
    pre_a = make_pipes_env(transport, f"{slurm_resource.remote_base}/opt/envs/ml-gpu-v2")
    pre_b = make_pipes_env(transport, f"{slurm_resource.remote_base}/opt/envs/data-processing-v1")
    payload = str(payloads / "env_report.py")

    @dg.asset(
        metadata={
            "slurm_pack_cmd": ["pixi", "run", "--frozen", "pack-gpu"],  # Uses GPU environment
        }
    )
    def gpu_training(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload).get_results()

    @dg.asset(
        metadata={
            "slurm_pack_cmd": ["pixi", "run", "--frozen", "pack-cpu"],  # Uses CPU environment
        }
    )
    def cpu_inference(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload).get_results()

    @dg.asset(metadata={"slurm_pre_deployed_env_path": pre_a})
    def ml_training(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload).get_results()

    @dg.asset(metadata={"slurm_pre_deployed_env_path": pre_b})
    def data_processing(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=payload).get_results()

    # the resource default is a pre-deployed environment; per-asset metadata wins over it
    compute = ComputeResource(mode="slurm", slurm=slurm_resource, pre_deployed_env_path=pre_b)
    result = _materialize([gpu_training, cpu_inference, ml_training, data_processing], compute)
    assert _meta(result, "gpu_training")["example_lib"] == "1.0/gpu"
    assert _meta(result, "cpu_inference")["example_lib"] == "1.0/cpu"
    assert _meta(result, "ml_training")["slurm_environment"] == pre_a
    assert _meta(result, "ml_training")["example_lib"] == "missing"
    assert _meta(result, "data_processing")["slurm_environment"] == pre_b
    assert _meta(result, "gpu_training")["slurm_environment"] != _meta(result, "cpu_inference")["slurm_environment"]


def test_production_deployment(pixi_project, slurm_resource, payloads, cluster_env, monkeypatch, tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    (pixi_project / "scripts").mkdir()
    shutil.copy(payloads / "env_report.py", pixi_project / "scripts" / "process.py")
    env = {**os.environ, **cluster_env, "SLURM_DEPLOYMENT_BASE_PATH": slurm_resource.remote_base}
    deploy = subprocess.run([sys.executable, "-m", "dagster_slurm.cli.main", "deploy", "--version", "v2024.02",
                             "--metadata-out", str(tmp_path / "deployment_metadata.json")],
                            cwd=pixi_project, env=env, capture_output=True, text=True, timeout=600)
    assert deploy.returncode == 0, deploy.stderr
    metadata = json.loads((tmp_path / "deployment_metadata.json").read_text())
    assert {"deployment_path", "platform", "git_commit", "cache_key", "created_at"} <= set(metadata)
    assert metadata["deployment_path"].endswith("/deployments/v2024.02")
    os.remove(pixi_project / "scripts" / "process.py")  # production must use the deployed copy

    from dagster_slurm.config.deployment import compute_resource_from_env

    for key, value in cluster_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", slurm_resource.remote_base)
    monkeypatch.setenv("DAGSTER_DEPLOYMENT", "production_docker")
    monkeypatch.setenv("CI_DEPLOYED_ENVIRONMENT_PATH", metadata["deployment_path"])

    @dg.asset
    def production_asset(
        context: dg.AssetExecutionContext,
        compute: ComputeResource,
        config: SlurmRunConfig,
    ):
        return compute.run(
            context=context,
            payload_path="process.py",  # Resolves to {CI_DEPLOYED_ENVIRONMENT_PATH}/scripts/process.py
            config=config,
        ).get_results()

    compute = compute_resource_from_env(slurm=slurm_resource)
    meta = _meta(_materialize([production_asset], compute), "production_asset")
    assert meta["example_lib"] == "1.0/cpu"
    assert meta["slurm_environment"] == metadata["deployment_path"]
    assert "slurm_env_cache_hit" not in meta  # pre-deployed: no packing at all


def test_corrupted_pixi_artifact_is_detected_and_nothing_unpacked(pixi_project, slurm_resource, transport):
    from dagster_slurm.errors import DagsterSlurmError
    from dagster_slurm.packaging.cache import ensure_environment
    from dagster_slurm.packaging.cache_key import compute_cache_key
    from dagster_slurm.packaging.packer import RemoteLayout
    from dagster_slurm.packaging.pixi_pack import PixiPackPacker

    class CorruptInTransit(PixiPackPacker):
        def upload(self, transport, result, layout, staging, log):
            figures = super().upload(transport, result, layout, staging, log)
            transport.run(f"printf x >> {staging}/.artifact/{result.artifact.name}")
            return figures

    base = transport.absolute(slurm_resource.remote_base)
    packer = CorruptInTransit(None, pixi_project, "linux-64")
    key = compute_cache_key((pixi_project / "pixi.lock").read_bytes(), packer.key_command(), "linux-64", [])
    with pytest.raises(DagsterSlurmError, match="checksum mismatch") as err:
        ensure_environment(transport, RemoteLayout(base), packer, key, log=print)
    assert "nothing was unpacked" in str(err.value)
    assert transport.stat_size(f"{base}/envs/{key}") is None
    assert transport.listdir(f"{base}/envs/.store") == []
