"""CLI bad input: one line naming the flag, before anything connects."""

import pytest

from dagster_slurm.cli.main import main


@pytest.mark.parametrize("argv, flag", [
    (["env", "gc", "--older-than", "soon"], "--older-than"),
    (["env", "gc", "--keep", "-1"], "--keep"),
])
def test_bad_gc_arguments_are_usage_errors(argv, flag, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_EDGE_NODE_HOST", raising=False)  # connecting would fail differently
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "Traceback" not in err


def test_deploy_without_git_says_pass_version(tmp_path, capsys, monkeypatch):
    for name, value in {"SLURM_EDGE_NODE_HOST": "127.0.0.1", "SLURM_EDGE_NODE_USER": "u",
                        "SLURM_EDGE_NODE_KEY_PATH": str(tmp_path / "k"),
                        "SLURM_DEPLOYMENT_BASE_PATH": "/x"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH at all
    assert main(["deploy", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--version" in err and "git" in err


def test_deploy_with_a_missing_project_folder(tmp_path, capsys, monkeypatch):
    for name, value in {"SLURM_EDGE_NODE_HOST": "127.0.0.1", "SLURM_EDGE_NODE_USER": "u",
                        "SLURM_EDGE_NODE_KEY_PATH": str(tmp_path / "k"), "SLURM_DEPLOYMENT_BASE_PATH": "/x"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    assert main(["deploy", "--project", str(tmp_path / "nope")]) == 2
    assert "--project" in capsys.readouterr().err
