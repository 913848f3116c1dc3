"""Lock-file discovery, deploy and deployment validation, pack command handling, gc planning."""

import os
import sys

import pytest

from dagster_slurm.cli.deploy import validate_deploy_env
from dagster_slurm.config.deployment import compute_config_from_env
from dagster_slurm.config.ssh import SSHConnectionResource
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.inventory import Inventory, Store, parse_duration_spec, plan_gc
from dagster_slurm.packaging.lockfile import find_lockfile
from dagster_slurm.packaging.pixi_pack import PixiPackPacker, declared_output, pixi_task_command

BASE = {"SLURM_EDGE_NODE_HOST": "h", "SLURM_EDGE_NODE_USER": "u", "SLURM_DEPLOYMENT_BASE_PATH": "/b"}


def test_lockfile_found_upwards_and_pixi_preferred(tmp_path):
    (tmp_path / "uv.lock").write_text("version = 1\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_lockfile(sub).kind == "uv"
    (tmp_path / "a" / "pixi.lock").write_text("version: 6\n")
    found = find_lockfile(sub)
    assert (found.kind, found.path.parent.name) == ("pixi", "a")


def test_missing_lockfile_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="No pixi.lock or uv.lock") as err:
        find_lockfile(tmp_path)
    assert "pre_deployed_env_path" in str(err.value)
    with pytest.raises(ConfigurationError, match="ComputeResource.lockfile"):
        find_lockfile(explicit=tmp_path / "nope.lock")


@pytest.mark.parametrize("extra, message", [
    ({"SLURM_EDGE_NODE_KEY_PATH": "/k", "SLURM_EDGE_NODE_PASSWORD": "p"}, "both"),
    ({}, "set one of"),
])
def test_deploy_needs_exactly_one_of_key_and_password(extra, message):
    with pytest.raises(ConfigurationError, match=message) as err:
        validate_deploy_env({**BASE, **extra})
    assert "SLURM_EDGE_NODE_KEY_PATH" in str(err.value) and "SLURM_EDGE_NODE_PASSWORD" in str(err.value)
    assert "p" not in str(err.value).split("SLURM_EDGE_NODE_PASSWORD")[-1].strip(" .;")  # no value leaked


def test_deploy_needs_host_and_base():
    with pytest.raises(ConfigurationError, match="SLURM_DEPLOYMENT_BASE_PATH"):
        validate_deploy_env({"SLURM_EDGE_NODE_HOST": "h", "SLURM_EDGE_NODE_USER": "u",
                             "SLURM_EDGE_NODE_KEY_PATH": "/k"})
    validate_deploy_env({**BASE, "SLURM_EDGE_NODE_KEY_PATH": "/k"})


def test_from_env_rejects_key_and_password(monkeypatch):
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "h")
    monkeypatch.setenv("SLURM_EDGE_NODE_KEY_PATH", "/k")
    monkeypatch.setenv("SLURM_EDGE_NODE_PASSWORD", "secret-pw")
    with pytest.raises(ConfigurationError) as err:
        SSHConnectionResource.from_env()
    assert "SLURM_EDGE_NODE_KEY_PATH" in str(err.value) and "SLURM_EDGE_NODE_PASSWORD" in str(err.value)
    assert "secret-pw" not in str(err.value)


def test_deployment_modes(monkeypatch):
    monkeypatch.delenv("CI_DEPLOYED_ENVIRONMENT_PATH", raising=False)
    assert compute_config_from_env("development") == {"mode": "local"}
    assert compute_config_from_env("staging_docker")["mode"] == "slurm"
    with pytest.raises(ConfigurationError, match="CI_DEPLOYED_ENVIRONMENT_PATH"):
        compute_config_from_env("production_supercomputer")
    monkeypatch.setenv("CI_DEPLOYED_ENVIRONMENT_PATH", "/d/v1")
    config = compute_config_from_env("production_docker")
    assert config["pre_deployed_env_path"] == "/d/v1" and config["default_skip_payload_upload"] is True
    with pytest.raises(ConfigurationError, match="DAGSTER_DEPLOYMENT='qa'"):
        compute_config_from_env("qa")


def test_declared_output_and_pixi_tasks(tmp_path):
    assert declared_output(["pixi-pack", "-o", "out/env.sh"]) == "out/env.sh"
    assert declared_output(["pixi-pack", "--output-file=x.tar"]) == "x.tar"
    assert declared_output(["pixi-pack", "--create-executable"]) == "environment.sh"
    assert declared_output(["pixi-pack"]) == "environment.tar"
    assert declared_output(["make", "env"]) is None
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pixi.tasks]\npack-gpu = "pixi-pack --environment gpu --platform linux-64 -o gpu.sh"\n')
    task = pixi_task_command(["pixi", "run", "--frozen", "pack-gpu"], tmp_path)
    assert task is not None and declared_output(task) == "gpu.sh"


def _packer(tmp_path, cmd):
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    return PixiPackPacker(cmd, tmp_path, "linux-64")


def test_failing_pack_command_shows_stderr_tail(tmp_path):
    packer = _packer(tmp_path, [sys.executable, "-c", "import sys; sys.stderr.write('solver exploded\\n'); "
                                "sys.exit(3)", "-o", "env.sh"])
    with pytest.raises(ConfigurationError, match="exit code 3") as err:
        packer.pack(tmp_path, print)
    assert "solver exploded" in str(err.value)


def test_pack_command_without_artifact(tmp_path):
    stale = tmp_path / "env.sh"
    stale.write_text("old")
    os.utime(stale, (1, 1))  # an old artefact must not be mistaken for the new one
    packer = _packer(tmp_path, [sys.executable, "-c", "pass", "-o", "env.sh"])
    with pytest.raises(ConfigurationError, match="made no artefact"):
        packer.pack(tmp_path, print)


def test_pack_command_not_installed(tmp_path):
    with pytest.raises(ConfigurationError, match="not installed"):
        _packer(tmp_path, ["pixi-pack-does-not-exist", "-o", "x.sh"]).pack(tmp_path, print)


def test_gc_plan_keeps_leased_deployed_recent_and_young():
    now = 1_000_000.0
    day = 86400
    inv = Inventory(
        stores={
            "/e/.store/a": Store("/e/.store/a", now - 30 * day, True, ["11"], ["w1.whl"]),  # leased, running job
            "/e/.store/b": Store("/e/.store/b", now - 30 * day, True, ["5"], ["w2.whl"]),   # finished job's lease
            "/e/.store/c": Store("/e/.store/c", now - 30 * day, True, [], ["w1.whl"]),      # deployment
            "/e/.store/d": Store("/e/.store/d", now - 1 * day, True, ["4"]),                # young
            "/e/.store/e": Store("/e/.store/e", now - 2 * 3600, False),                     # half-built, abandoned
            "/e/.store/f": Store("/e/.store/f", now - 60, False),                           # may still be building
        },
        links={"/e/a": "/e/.store/a", "/e/b": "/e/.store/b", "/b/deployments/v1": "/e/.store/c"},
        wheels={"w1.whl": now - 30 * day, "w2.whl": now - 30 * day, "w3.whl": now - 60},
        active_jobs={"11"},
    )
    plan = plan_gc(inv, keep=0, older_than=7 * day, now=now)
    assert [s.name for s in plan.stores] == ["b", "e"]
    assert plan.wheels == ["w2.whl"]  # w1 is still used; w3 may belong to a build in progress
    assert plan.stale_leases == ["/e/.store/d/.leases/4"]
    assert [s.name for s in plan_gc(inv, keep=1, older_than=0, now=now).stores] == ["b", "e"]  # d is newest
    inv.build_locks = 1  # a build is running: shared wheels are left alone
    assert plan_gc(inv, keep=0, older_than=7 * day, now=now).wheels == []


def test_inventory_parse_and_durations():
    inv = Inventory.parse("LINK|/e/k|/e/.store/k-1\nSTORE|/e/.store/k-1|100|published|7,8,\nACTIVE|0|8,\n")
    store = inv.stores["/e/.store/k-1"]
    assert store.published and store.leases == ["7", "8"] and inv.active_leases(store) == ["8"]
    assert inv.links_to("/e/.store/k-1") == ["/e/k"] and inv.squeue_error is None
    assert parse_duration_spec("12h") == 43200 and parse_duration_spec("7d") == 604800
    with pytest.raises(ValueError):
        parse_duration_spec("soon")


def test_inventory_squeue_failure_is_not_read_as_no_active_job():
    down = Inventory.parse("ACTIVE|1|slurm_load_jobs error: Unable to contact slurm controller (connect failure),\n")
    assert down.squeue_error is not None and "Unable to contact" in down.squeue_error
    gone = Inventory.parse("ACTIVE|1|slurm_load_jobs error: Invalid job id specified,\n")  # all leased jobs ended
    assert gone.squeue_error is None and gone.active_jobs == set()
