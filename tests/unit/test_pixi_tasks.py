"""`pixi run ... TASK` pack commands, resolved from realistic manifests as pixi does."""

from pathlib import Path

import pytest

from dagster_slurm.packaging.pixi_pack import PixiPackPacker, declared_output
from dagster_slurm.packaging.pixi_tasks import parse_run, resolve_task

PIXI_TOML = """
[workspace]
name = "hpc-project"
channels = ["conda-forge"]
platforms = ["linux-64", "osx-arm64"]

[tasks]
pack = "pixi-pack --environment default --platform linux-64 --create-executable -o env.sh"
list-pack = { cmd = ["pixi-pack", "--environment", "default", "-o", "list.tar"] }
in-sub = { cmd = "pixi-pack -o out/sub.sh --create-executable", cwd = "deploy" }
only-deps = { depends-on = ["pack"] }

[target.linux-64.tasks]
pack = "pixi-pack --environment default --platform linux-64 --create-executable -o linux.sh"

[feature.cluster.tasks]
pack-cluster = "pixi-pack --environment cluster --platform linux-64 --create-executable --ignore-pypi-non-wheel --inject dist/mylib-*.conda -o cluster.sh"

[feature.opstooling.target.linux-64.tasks]
pack-ops = "pixi-pack -e cluster -o ops-linux.sh"

[feature.opstooling.tasks]
pack-ops = "pixi-pack -e cluster -o ops.sh"

[environments]
cluster = ["cluster"]
opstooling = { features = ["opstooling", "cluster"], solve-group = "default" }
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pixi.toml").write_text(PIXI_TOML)
    (tmp_path / "pyproject.toml").write_text('[tool.pixi.tasks]\npack = "pixi-pack -o from-pyproject.sh"\n')
    return tmp_path


def test_run_options_environment_and_arguments_after_the_task():
    assert parse_run(["pixi", "run", "--frozen", "-e", "gpu", "pack", "--inject", "x.conda"]) == (
        "gpu", "pack", ["--inject", "x.conda"])
    assert parse_run(["pixi", "run", "--environment=cpu", "--manifest-path", "p/pixi.toml", "t"]) == ("cpu", "t", [])
    assert parse_run(["pixi", "run", "--locked"]) is None and parse_run(["pixi-pack", "-o", "x"]) is None


def test_pixi_toml_wins_over_pyproject_and_the_platform_target_over_the_plain_task(project):
    task = resolve_task(["pixi", "run", "pack"], project, "linux-64")
    assert declared_output(task.command) == "linux.sh"  # [target.linux-64.tasks], from pixi.toml
    assert declared_output(resolve_task(["pixi", "run", "pack"], project, "osx-arm64").command) == "env.sh"


def test_list_commands_cwd_and_extra_arguments(project):
    task = resolve_task(["pixi", "run", "list-pack", "--create-executable"], project, "linux-64")
    assert task.command == ["pixi-pack", "--environment", "default", "-o", "list.tar", "--create-executable"]
    assert declared_output(task.command) == "list.sh"  # the extra argument counts
    sub = resolve_task(["pixi", "run", "in-sub"], project, "linux-64")
    assert sub.cwd == project / "deploy" and declared_output(sub.command) == "out/sub.sh"
    assert resolve_task(["pixi", "run", "only-deps"], project, "linux-64") is None


def test_feature_tasks_are_seen_in_the_environments_that_have_the_feature(project):
    assert resolve_task(["pixi", "run", "pack-cluster"], project, "linux-64") is None  # not in default
    cluster = resolve_task(["pixi", "run", "-e", "cluster", "pack-cluster"], project, "linux-64")
    assert declared_output(cluster.command) == "cluster.sh" and "--inject" in cluster.command
    ops = resolve_task(["pixi", "run", "-e", "opstooling", "pack-ops"], project, "linux-64")
    assert declared_output(ops.command) == "ops-linux.sh"  # the feature's platform target wins
    assert declared_output(resolve_task(["pixi", "run", "-e", "opstooling", "pack-ops"], project, "osx-arm64")
                           .command) == "ops.sh"


def test_pyproject_when_there_is_no_pixi_toml(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.pixi.tasks]\npack = { cmd = "pixi-pack -o py.tar" }\n')
    assert resolve_task(["pixi", "run", "pack"], tmp_path, "linux-64").command == ["pixi-pack", "-o", "py.tar"]


def test_injects_of_a_feature_task_count_for_the_cache_key(project):
    (project / "dist").mkdir()
    (project / "dist" / "mylib-1.0-0.conda").write_bytes(b"v1")
    packer = PixiPackPacker(["pixi", "run", "-e", "cluster", "pack-cluster"], project, "linux-64")
    assert [p.name for p in packer.key_files()] == ["mylib-1.0-0.conda"]


def test_the_pixi_stand_in_reads_the_manifest_as_pixi_does(project, tmp_path):
    """The stand-in (tests/standins/pixi_run.py) models the same rules: pixi.toml's tasks, cwd, -e ENV."""
    import subprocess
    import sys

    (project / "pixi.toml").write_text(PIXI_TOML.replace("pixi-pack", "echo"))
    (project / "deploy").mkdir()
    run = Path(__file__).resolve().parents[1] / "standins" / "pixi_run.py"

    def pixi(*args):
        return subprocess.run([sys.executable, str(run), "run", *args], cwd=project, capture_output=True, text=True)

    assert pixi("pack").stdout.split()[-1] == "linux.sh"  # pixi.toml's target task, not pyproject's
    assert pixi("-e", "cluster", "pack-cluster").returncode == 0 and pixi("pack-cluster").returncode == 1
    sub = subprocess.run([sys.executable, str(run), "run", "in-sub"], cwd=project, capture_output=True, text=True)
    assert sub.stdout.strip().endswith("--create-executable")
    (project / "pixi.toml").unlink()
    (project / "pyproject.toml").write_text('[tool.pixi.tasks]\npack = "echo -o from-pyproject.sh"\n')
    assert pixi("pack").stdout.strip() == "-o from-pyproject.sh"
