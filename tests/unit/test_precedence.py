"""The five precedence levels, one case per level; an unset SlurmRunConfig shadows nothing."""

from dagster_slurm import SlurmRunConfig
from dagster_slurm.compute.options import resolve_run_options

META = {"slurm_force_env_push": True, "slurm_skip_payload_upload": True, "slurm_remote_payload_path": "/m.py"}


def test_level1_explicit_parameter_wins_over_everything():
    opts = resolve_run_options({"skip_payload_upload": False, "force_env_push": False},
                               SlurmRunConfig(skip_payload_upload=True, force_env_push=True), META,
                               {"skip_payload_upload": True})
    assert (opts.skip_payload_upload, opts.force_env_push) == (False, False)
    assert opts.sources["skip_payload_upload"] == "explicit parameter"


def test_level2_run_config_wins_over_metadata_and_resource():
    opts = resolve_run_options({}, SlurmRunConfig(skip_payload_upload=False, remote_payload_path="/c.py"), META,
                               {"skip_payload_upload": True})
    assert opts.skip_payload_upload is False and opts.remote_payload_path == "/c.py"
    assert opts.sources["skip_payload_upload"] == "SlurmRunConfig"


def test_level3_metadata_wins_over_resource_default():
    opts = resolve_run_options({}, None, {"slurm_skip_payload_upload": False}, {"skip_payload_upload": True})
    assert opts.skip_payload_upload is False and opts.sources["skip_payload_upload"] == "asset metadata"


def test_level4_resource_default():
    opts = resolve_run_options({}, None, {}, {"skip_payload_upload": True})
    assert opts.skip_payload_upload is True and opts.sources["skip_payload_upload"] == "ComputeResource default"


def test_level5_built_in_defaults():
    opts = resolve_run_options({}, None, {}, {})
    assert (opts.force_env_push, opts.skip_payload_upload, opts.remote_payload_path) == (False, False, None)
    assert set(opts.sources.values()) == {"built-in default"}


def test_default_run_config_does_not_shadow_metadata_or_resource():
    opts = resolve_run_options({}, SlurmRunConfig(), META, {"skip_payload_upload": False})
    assert opts.force_env_push is True and opts.skip_payload_upload is True
    assert opts.sources["force_env_push"] == "asset metadata"
    opts = resolve_run_options({}, SlurmRunConfig(), {}, {"skip_payload_upload": True})
    assert opts.skip_payload_upload is True and opts.sources["skip_payload_upload"] == "ComputeResource default"
