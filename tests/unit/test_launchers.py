"""Multi-rank launchers: the rank shim run for real by bash, local mode as rank 0 of 1, and the resource
settings they bring."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster_pipes import encode_param

from dagster_slurm import ComputeResource, SlurmQueueConfig, SrunLauncher, TorchrunLauncher
from dagster_slurm.compute.launchers import RANK_SHIM
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.slurm.script import queue_directives

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
REPORT_ENV = "import os; print(os.environ['DAGSTER_SLURM_RANK'], os.environ['DAGSTER_SLURM_WORLD_SIZE'], " \
             "os.environ['DAGSTER_PIPES_MESSAGES']); import sys; print('to stderr', file=sys.stderr); sys.exit(5)"


def _shim(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "RANK", "WORLD_SIZE"))}
    return subprocess.run(["bash", "-c", RANK_SHIM, "dagster-slurm-rank", sys.executable, "-c", REPORT_ENV],
                          env={**base, "DAGSTER_PIPES_MESSAGES": "rank0-channel", "DAGSTER_SLURM_PIPES_OFF": "off",
                               **env}, capture_output=True, text=True, timeout=30)


def test_rank_shim_keeps_pipes_for_rank_zero_prefixes_lines_and_keeps_the_exit_status():
    zero = _shim(SLURM_PROCID="0", SLURM_NTASKS="3", SLURMD_NODENAME="n1")
    assert zero.returncode == 5
    assert zero.stdout == "[rank 0@n1] 0 3 rank0-channel\n" and zero.stderr == "[rank 0@n1] to stderr\n"
    other = _shim(SLURM_PROCID="2", SLURM_NTASKS="3", SLURMD_NODENAME="n3")
    assert other.stdout == "[rank 2@n3] 2 3 off\n"  # its Pipes messages go nowhere


def test_rank_shim_prefers_torchruns_global_rank():
    out = _shim(SLURM_PROCID="1", RANK="3", WORLD_SIZE="4", SLURMD_NODENAME="n2")
    assert out.stdout == "[rank 3@n2] 3 4 off\n"


def test_multi_rank_launchers_drop_other_ranks_messages_into_dev_null():
    assert SrunLauncher().job_env() == {"DAGSTER_SLURM_PIPES_OFF": encode_param({"path": "/dev/null"})}
    assert TorchrunLauncher().job_env() == SrunLauncher().job_env()


def test_slurm_mode_commands_and_directives():
    srun = SrunLauncher(ntasks_per_node=2, mpi="pmi2").command("p.py", local=False)
    assert srun[:3] == ["bash", "-c", srun[2]] and "exec srun --kill-on-bad-exit=1" in srun[2]
    assert srun[4:6] == ["--ntasks-per-node=2", "--mpi=pmi2"] and srun[-4:] == [RANK_SHIM, "dagster-slurm-rank", "python", "p.py"]
    assert SrunLauncher(ntasks_per_node=2).sbatch_directives() == {"ntasks-per-node": "2"}
    assert SrunLauncher().sbatch_directives() == {}
    torch = TorchrunLauncher(nproc_per_node=4, rdzv_port=29500).command("p.py", local=False)
    assert torch[4:7] == ["4", "torchrun", "29500"] and "--rdzv-backend=c10d" in torch[2]
    assert TorchrunLauncher().sbatch_directives() == {"ntasks-per-node": "1"}


def test_ray_launcher_commands():
    from dagster_slurm import RayLauncher

    argv = RayLauncher(start_timeout=30.5, ray_start_args=["--num-gpus=0", "--resources={\"a\": 1}"]).command(
        "p.py", local=False)
    assert argv[:2] == ["bash", "-c"] and argv[3:7] == ["dagster-slurm-ray", "ray", "30", "--num-gpus=0 '--resources={\"a\": 1}'"]
    assert argv[-2:] == ["python", "p.py"] and RayLauncher().sbatch_directives() == {}
    assert RayLauncher().command("p.py", local=True) == [sys.executable, "p.py"]  # ray.init() starts a local Ray


def test_torchrun_local_mode_is_rank_zero_of_one_with_a_rendezvous_address():
    argv = TorchrunLauncher().command("p.py", local=True)
    assert argv[0] == "env" and argv[-2:] == [sys.executable, "p.py"]
    env = dict(a.split("=", 1) for a in argv[1:-2])
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"], env["DAGSTER_SLURM_RANK"]) == ("0", "1", "127.0.0.1", "0")
    assert 0 < int(env["MASTER_PORT"]) < 65536


def test_srun_asset_runs_locally_as_rank_zero_of_one():
    @dg.asset
    def ranked(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(PAYLOADS / "ranks.py"), launcher=SrunLauncher(),
                           extras={"tag": "local-tag"}).get_results()

    result = dg.materialize([ranked], resources={"compute": ComputeResource(mode="local")})
    meta = result.asset_materializations_for_node("ranked")[0].metadata
    assert (meta["world_size"].value, meta["ranks"].value) == (1, ["local:local-tag"])


def test_queue_settings_for_multi_node_jobs():
    queue = SlurmQueueConfig(cpus_per_task=4, ntasks_per_node=2, num_nodes=3, gpus_per_node=2, gpu_type="a100")
    directives = queue_directives(queue.model_dump())
    assert {k: directives[k] for k in ("cpus-per-task", "ntasks-per-node", "nodes", "gpus-per-node")} == {
        "cpus-per-task": "4", "ntasks-per-node": "2", "nodes": "3", "gpus-per-node": "a100:2"}
    assert "gpu-type" not in directives
    per_asset = queue_directives(queue.model_dump(), {"gpus_per_node": 1, "cpus_per_task": 8})
    assert (per_asset["gpus-per-node"], per_asset["cpus-per-task"]) == ("a100:1", "8")
    with pytest.raises(ConfigurationError, match="gpu_type='h100' needs gpus_per_node"):
        queue_directives(SlurmQueueConfig().model_dump(), {"gpu_type": "h100"})
    with pytest.raises(ValueError, match="same setting"):  # pydantic wraps it, text kept
        SlurmQueueConfig(cpus=2, cpus_per_task=4)
