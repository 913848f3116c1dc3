"""The spec's cache-invalidation table, one case per row, on real files."""

import shutil
from pathlib import Path

import pytest

from dagster_slurm.packaging.cache_key import compute_cache_key, files_for_key, inject_files

GLOBS = ["../dist/dagster_slurm-*-py3-none-any.whl", "projects/dagster-slurm-example-shared/dist/*.conda"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    proj = root / "proj"
    (root / "dist").mkdir(parents=True)
    (proj / "projects/dagster-slurm-example-shared/dist").mkdir(parents=True)
    (proj / "projects/workload/dist").mkdir(parents=True)
    (proj / "pixi.lock").write_text("version: 6\npackages: []\n")
    (root / "dist/dagster_slurm-1.0-py3-none-any.whl").write_bytes(b"base lib v1")
    (proj / "projects/dagster-slurm-example-shared/dist/shared-1.0-0.conda").write_bytes(b"shared v1")
    (proj / "projects/workload/dist/workload-1.0-0.conda").write_bytes(b"workload v1")
    (proj / "process.py").write_text("print('payload v1')\n")
    return proj


CMD = ["pixi-pack", "--environment", "default", "--platform", "{platform}", "--create-executable",
       "--inject", "../dist/dagster_slurm-*-py3-none-any.whl",
       "--inject", "projects/dagster-slurm-example-shared/dist/shared-1.0-0.conda",
       "--inject=projects/workload/dist/workload-1.0-0.conda", "-o", "{output}"]


def key(project: Path, globs=GLOBS, platform="linux-64", cmd=CMD) -> str:
    return compute_cache_key((project / "pixi.lock").read_bytes(), cmd, platform,
                             files_for_key(cmd, project, globs))


def test_inject_files_are_found_with_globs_and_equals_form(project):
    names = sorted(p.name for p in inject_files(CMD, project))
    assert names == ["dagster_slurm-1.0-py3-none-any.whl", "shared-1.0-0.conda", "workload-1.0-0.conda"]


def test_row_pixi_lock_changed_invalidates(project):
    before = key(project)
    (project / "pixi.lock").write_text("version: 6\npackages: [x]\n")
    assert key(project) != before


def test_row_base_wheel_changed_invalidates(project):
    before = key(project)
    (project.parent / "dist/dagster_slurm-1.0-py3-none-any.whl").write_bytes(b"base lib v2")
    assert key(project) != before


def test_row_shared_conda_changed_invalidates(project):
    before = key(project)
    (project / "projects/dagster-slurm-example-shared/dist/shared-1.0-0.conda").write_bytes(b"shared v2")
    assert key(project) != before


def test_row_excluded_workload_conda_changed_reuses(project):
    before = key(project)
    (project / "projects/workload/dist/workload-1.0-0.conda").write_bytes(b"workload v2")
    assert key(project) == before


def test_row_payload_script_changed_is_not_part_of_the_key(project):
    before = key(project)
    (project / "process.py").write_text("print('payload v2')\n")
    assert key(project) == before


def test_without_globs_every_injected_file_counts(project):
    before = key(project, globs=None)
    (project / "projects/workload/dist/workload-1.0-0.conda").write_bytes(b"workload v2")
    assert key(project, globs=None) != before


def test_platform_and_command_are_part_of_the_key(project):
    assert key(project, platform="linux-64") != key(project, platform="linux-aarch64")
    assert key(project) != key(project, cmd=[*CMD, "--ignore-pypi-non-wheel"])
    # whitespace-only differences in the command do not matter
    assert key(project, cmd=" ".join(CMD)) == key(project)


def test_recursive_globs(project):
    nested = project / "projects/dagster-slurm-example-shared/dist/sub/deeper"
    nested.mkdir(parents=True)
    shutil.copy(project / "projects/dagster-slurm-example-shared/dist/shared-1.0-0.conda", nested / "x.conda")
    cmd = [*CMD, "--inject", "projects/dagster-slurm-example-shared/dist/sub/deeper/x.conda"]
    before = key(project, globs=["projects/**/*shared/**/*.conda"], cmd=cmd)
    (nested / "x.conda").write_bytes(b"changed")
    assert key(project, globs=["projects/**/*shared/**/*.conda"], cmd=cmd) != before
