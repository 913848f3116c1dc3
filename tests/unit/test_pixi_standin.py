"""The offline pixi-pack stand-in (tests/standins): genuine conda packages, pack, self-extract, unpack, import.

py-rattler is only ever loaded in child processes (see build_pixi_project_in_subprocess).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.standins.make_conda_packages import make_custom_package
from tests.standins.pixi_project import build_pixi_project_in_subprocess, write_pixi_pack_executables

STANDINS = Path(__file__).resolve().parents[1] / "standins"
PIXI_PACK = STANDINS / "pixi_pack.py"
PIXI_UNPACK = STANDINS / "pixi_unpack.py"
# The cluster-side unpacker must work with a bare system python3 (no venv, no zstd module).
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
PIPES_VERSION = version("dagster-pipes")
IMPORT_CHECK = "import dagster_pipes, example_lib; print(example_lib.VERSION, example_lib.VARIANT)"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="packs linux-64 environments")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_pixi_project_in_subprocess(tmp_path_factory.mktemp("pixi"), "1.0")


def pack(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(PIXI_PACK), *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def unpack_tar(pack_file: Path, out: Path, *extra: str, python: str = SYSTEM_PYTHON, env=None):
    return subprocess.run(
        [python, str(PIXI_UNPACK), str(pack_file), "-o", str(out), *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or CLEAN_ENV,
    )


def run_activated(deploy_dir: Path, code: str = IMPORT_CHECK) -> str:
    proc = subprocess.run(
        ["bash", "-c", f'. "{deploy_dir}/activate.sh" && python -c "{code}"'],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def members(tar_path: Path) -> dict[str, bytes | None]:
    with tarfile.open(tar_path) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def rewrite_tar(src: Path, dst: Path, edit) -> None:
    """Copy a tar, passing each file's bytes through ``edit(name, data)``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if data is not None:
                data = edit(m.name, data)
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)


def flip_middle_byte(data: bytes) -> bytes:
    buf = bytearray(data)
    buf[len(buf) // 2] ^= 0xFF
    return bytes(buf)


def test_pack_writes_pixi_pack_layout(project: Path, tmp_path: Path) -> None:
    proc = pack("-e", "default", "-p", "linux-64", str(project), cwd=tmp_path)
    assert proc.stdout == ""
    files = members(tmp_path / "environment.tar")
    assert json.loads(files["pixi-pack.json"])["version"] == "1"
    assert json.loads(files["pixi-pack.json"])["platform"] == "linux-64"
    names = sorted(n for n in files if n.endswith(".tar.bz2"))
    assert names == [
        "channel/linux-64/python-shim-3.11-0.tar.bz2",
        f"channel/noarch/dagster-pipes-{PIPES_VERSION}-0.tar.bz2",
        "channel/noarch/example-lib-1.0-cpu_0.tar.bz2",
    ]
    for subdir in ("linux-64", "noarch"):
        repodata = json.loads(files[f"channel/{subdir}/repodata.json"])
        assert repodata["info"] == {"subdir": subdir}
        for fn, record in repodata["packages.conda"].items():
            assert hashlib.sha256(files[f"channel/{subdir}/{fn}"]).hexdigest() == record["sha256"]
    env_yml = files["environment.yml"].decode()
    assert "  - ./channel\n  - nodefaults\n" in env_yml and "  - example-lib=1.0=cpu_0\n" in env_yml
    # Deterministic: the same lock packs to the same bytes.
    pack("-o", "again.tar", str(project / "pixi.toml"), cwd=tmp_path)
    assert (tmp_path / "again.tar").read_bytes() == (tmp_path / "environment.tar").read_bytes()


def test_tar_unpacks_with_system_python_and_imports(project: Path, tmp_path: Path) -> None:
    pack(str(project), cwd=tmp_path)
    proc = unpack_tar(tmp_path / "environment.tar", tmp_path / "deploy")
    assert proc.returncode == 0, proc.stderr
    prefix = tmp_path / "deploy" / "env"
    assert sorted(p.name for p in (prefix / "conda-meta").iterdir()) == [
        f"dagster-pipes-{PIPES_VERSION}-0.json",
        "example-lib-1.0-cpu_0.json",
        "history",
        "python-shim-3.11-0.json",
    ]
    record = json.loads((prefix / "conda-meta" / "example-lib-1.0-cpu_0.json").read_text())
    assert record["files"] == ["lib/python3.11/site-packages/example_lib/__init__.py"]
    assert run_activated(tmp_path / "deploy") == "1.0 cpu"


def test_self_extracting_executable_gpu_env(project: Path, tmp_path: Path) -> None:
    pack(
        "--create-executable",
        "-e",
        "gpu",
        "-o",
        str(tmp_path / "out" / "pack.tar"),
        str(project),
        cwd=tmp_path,
    )
    script = tmp_path / "out" / "pack.sh"  # pixi-pack swaps the extension for .sh
    assert script.exists() and not (tmp_path / "out" / "pack.tar").exists()
    assert os.access(script, os.X_OK)
    text = script.read_bytes()
    assert text.startswith(b"#!/usr/bin/env bash\n") and b"\n@@END_HEADER@@\n" in text
    assert text.rstrip().endswith(b"@@END_ARCHIVE@@")
    proc = subprocess.run(
        ["bash", str(script), "-o", str(tmp_path / "deploy"), "-e", "gpuenv"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "deploy" / "gpuenv" / "bin" / "python").exists()
    assert run_activated(tmp_path / "deploy") == "1.0 gpu"
    # default output name and default unpack location (cwd, env/)
    pack("--create-executable", str(project), cwd=tmp_path)
    proc = subprocess.run(
        ["bash", "environment.sh"], cwd=tmp_path, check=False, capture_output=True, text=True, env=CLEAN_ENV
    )
    assert proc.returncode == 0, proc.stderr
    assert run_activated(tmp_path) == "1.0 cpu"


def test_version_bump_changes_lock_and_pack(tmp_path: Path) -> None:
    project = build_pixi_project_in_subprocess(tmp_path / "p", "1.0")
    lock_v1 = (project / "pixi.lock").read_bytes()
    assert build_pixi_project_in_subprocess(tmp_path / "p", "1.1") == project
    assert (project / "pixi.lock").read_bytes() != lock_v1
    bins = write_pixi_pack_executables(tmp_path / "bin")
    proc = subprocess.run(
        [str(bins["pixi-pack"]), "--create-executable", str(project)],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        subprocess.run(
            ["bash", "environment.sh", "-o", "d"], cwd=tmp_path, env=CLEAN_ENV, check=False
        ).returncode
        == 0
    )
    assert run_activated(tmp_path / "d") == "1.1 cpu"


def test_inject_adds_package(project: Path, tmp_path: Path) -> None:
    extra = make_custom_package(
        tmp_path / "built",
        "injected-extra",
        "0.3",
        {"lib/python3.11/site-packages/injected_extra.py": "MARK = 'injected'\n"},
        depends=["python-shim 3.11.*"],
        fmt=".tar.bz2",
    )
    conda_fmt = make_custom_package(
        tmp_path / "built",
        "injected-zst",
        "0.1",
        {"lib/python3.11/site-packages/injected_zst.py": "MARK = 'zst'\n"},
        depends=["example-lib"],
    )
    assert conda_fmt.suffix == ".conda"
    pack(str(project), "--inject", str(extra), "-i", str(conda_fmt), cwd=tmp_path)
    files = members(tmp_path / "environment.tar")
    assert "channel/noarch/injected-extra-0.3-0.tar.bz2" in files
    assert "channel/noarch/injected-zst-0.1-0.conda" in files
    repodata = json.loads(files["channel/noarch/repodata.json"])
    assert {"injected-extra-0.3-0.tar.bz2", "injected-zst-0.1-0.conda"} <= set(repodata["packages.conda"])
    assert "  - injected-extra=0.3=0\n" in files["environment.yml"].decode()
    # .conda needs zstd: the venv python has it (backports.zstd), Python >= 3.14 has it built in
    # (compression.zstd); a bare python3 older than that, without a zstd binary, fails naming zstd.
    bare = unpack_tar(tmp_path / "environment.tar", tmp_path / "bare", env={"PATH": "/nonexistent"})
    builtin_zstd = subprocess.run([SYSTEM_PYTHON, "-c", "import compression.zstd"], capture_output=True).returncode == 0
    if builtin_zstd:
        assert bare.returncode == 0, bare.stderr
    else:
        assert bare.returncode != 0 and "zstd" in bare.stderr
    proc = unpack_tar(
        tmp_path / "environment.tar",
        tmp_path / "deploy",
        python=sys.executable,
        env={**CLEAN_ENV, "PATH": "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        run_activated(
            tmp_path / "deploy",
            "import injected_extra, injected_zst; print(injected_extra.MARK, injected_zst.MARK)",
        )
        == "injected zst"
    )


def test_inject_with_unsatisfied_dependency_is_refused(project: Path, tmp_path: Path) -> None:
    bad = make_custom_package(
        tmp_path, "needs-missing", "1.0", {"share/x.txt": "x"}, depends=["not-there >=1"]
    )
    proc = pack(str(project), "--inject", str(bad), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "not-there" in proc.stderr
    assert not (tmp_path / "environment.tar").exists()


def test_corrupt_package_fails_unpack(project: Path, tmp_path: Path) -> None:
    pack(str(project), cwd=tmp_path)
    bad = tmp_path / "bad.tar"
    rewrite_tar(
        tmp_path / "environment.tar",
        bad,
        lambda name, data: flip_middle_byte(data) if name.endswith("example-lib-1.0-cpu_0.tar.bz2") else data,
    )
    proc = unpack_tar(bad, tmp_path / "deploy")
    assert proc.returncode != 0
    assert "example-lib-1.0-cpu_0.tar.bz2 is corrupt: sha256" in proc.stderr
    assert not (tmp_path / "deploy" / "activate.sh").exists()

    # The same through the self-extracting script: corrupt the embedded package, keep valid base64.
    pack("--create-executable", str(project), cwd=tmp_path)
    script = (tmp_path / "environment.sh").read_bytes()
    head, rest = script.split(b"\n@@END_HEADER@@\n", 1)
    payload, tail = rest.split(b"\n@@END_ARCHIVE@@", 1)
    (tmp_path / "inner.tar").write_bytes(base64.b64decode(payload))
    rewrite_tar(
        tmp_path / "inner.tar",
        tmp_path / "inner-bad.tar",
        lambda name, data: flip_middle_byte(data) if name.endswith("python-shim-3.11-0.tar.bz2") else data,
    )
    corrupt = head + b"\n@@END_HEADER@@\n" + base64.b64encode((tmp_path / "inner-bad.tar").read_bytes())
    (tmp_path / "bad.sh").write_bytes(corrupt + b"\n@@END_ARCHIVE@@" + tail)
    proc = subprocess.run(
        ["bash", "bad.sh", "-o", "d2"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    assert proc.returncode != 0
    assert "python-shim-3.11-0.tar.bz2 is corrupt" in proc.stderr
    # A truncated script fails too.
    (tmp_path / "cut.sh").write_bytes(script[: len(script) // 2])
    proc = subprocess.run(
        ["bash", "cut.sh", "-o", "d3"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    assert proc.returncode != 0 and "@@END_ARCHIVE@@" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "nope"], "environment not found in lockfile: nope"),
        (["-p", "osx-arm64"], "platform not found in lockfile: osx-arm64"),
    ],
)
def test_pack_errors(project: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = pack(*args, str(project), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stderr and proc.stdout == ""


def test_pack_without_lock_fails(tmp_path: Path) -> None:
    (tmp_path / "pixi.toml").write_text("[workspace]\n")
    proc = pack(str(tmp_path / "pixi.toml"), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "could not read lockfile" in proc.stderr
    proc = pack(str(tmp_path / "missing"), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "manifest path does not exist" in proc.stderr


def test_other_platform_packs_but_does_not_unpack_here(project: Path, tmp_path: Path) -> None:
    if shutil.which("uname") and os.uname().machine != "x86_64":
        pytest.skip("checks an aarch64 pack on an x86_64 machine")
    pack("-p", "linux-aarch64", str(project), cwd=tmp_path)
    files = members(tmp_path / "environment.tar")
    assert "channel/linux-aarch64/python-shim-3.11-0.tar.bz2" in files
    assert json.loads(files["pixi-pack.json"])["platform"] == "linux-aarch64"
    proc = unpack_tar(tmp_path / "environment.tar", tmp_path / "deploy")
    assert proc.returncode != 0 and "different platform" in proc.stderr


# --- the pixi-pack contract (issue: hold the packer and its stand-ins to the real tool) ---------------------

def _packer(project: Path, cmd, platform: str = "linux-64", **kw):
    from dagster_slurm.packaging.pixi_pack import PixiPackPacker

    return PixiPackPacker(cmd, project, platform, **kw)


def _install(packer, result, staging: Path, env=None) -> subprocess.CompletedProcess:
    """Run the packer's install script locally, as the cluster would, with the artefact uploaded."""
    from dagster_slurm.packaging.packer import RemoteLayout

    (staging / ".artifact").mkdir(parents=True)
    shutil.copy(result.artifact, staging / ".artifact" / result.artifact.name)
    script = packer.install_script(result, RemoteLayout(str(staging.parent)), str(staging))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**CLEAN_ENV, **(env or {})})


@pytest.mark.parametrize(("output", "written"), [("foo", "foo.sh"), ("a.tar.bz2", "a.tar.sh"), ("x.tar", "x.sh"),
                                                 ("env.sh", "env.sh")])
def test_create_executable_replaces_the_last_extension(project: Path, tmp_path: Path, output, written) -> None:
    from dagster_slurm.packaging.pixi_pack import declared_output

    cmd = ["pixi-pack", "--create-executable", "-o", output]
    assert declared_output(cmd) == written
    pack("--create-executable", "-o", str(tmp_path / output), str(project), cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [written]  # the stand-in names it the same way


def test_a_plain_tar_named_sh_is_unpacked_as_a_tar(project: Path, tmp_path: Path) -> None:
    """`-o gpu.sh` without --create-executable is a tar called .sh: chosen by content, unpacked by pixi-unpack."""
    bin_dir = tmp_path / "bin"
    write_pixi_pack_executables(bin_dir)
    packer = _packer(project, [str(bin_dir / "pixi-pack"), "-o", "{output}", "{project}"])
    packer.command = lambda build_dir: [str(bin_dir / "pixi-pack"), "-o", str(build_dir / "gpu.sh"), str(project)]
    (tmp_path / "build").mkdir()
    result = packer.pack(tmp_path / "build", print)
    assert result.artifact.name == "gpu.sh" and result.extra["self_extracting"] is False
    proc = _install(packer, result, tmp_path / "base" / "staging", env={"PATH": f"{bin_dir}:{CLEAN_ENV['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert run_activated(tmp_path / "base" / "staging") == "1.0 cpu"


def test_pixi_unpack_is_found_in_pixi_bin_or_configured_or_named_missing(project: Path, tmp_path: Path) -> None:
    tar = tmp_path / "env.tar"
    pack("-o", str(tar), str(project), cwd=tmp_path)
    from dagster_slurm.packaging.cache_key import file_sha256
    from dagster_slurm.packaging.packer import PackResult

    result = PackResult(tar, file_sha256(tar), tar.stat().st_size, extra={"self_extracting": False})
    home = tmp_path / "home"
    missing = _install(_packer(project, None), result, tmp_path / "a" / "staging", env={"HOME": str(home)})
    assert missing.returncode == 43 and "pixi global install pixi-unpack" in missing.stderr
    assert "ComputeResource.pixi_unpack_path" in missing.stderr
    write_pixi_pack_executables(home / ".pixi" / "bin")  # where `pixi global install` puts it; not on PATH
    found = _install(_packer(project, None), result, tmp_path / "b" / "staging", env={"HOME": str(home)})
    assert found.returncode == 0, found.stderr
    configured = _packer(project, None, pixi_unpack_path=str(home / ".pixi" / "bin" / "pixi-unpack"))
    assert _install(configured, result, tmp_path / "c" / "staging").returncode == 0
    wrong = _install(_packer(project, None, pixi_unpack_path="/nowhere/pixi-unpack"), result, tmp_path / "d" / "staging")
    assert wrong.returncode == 43 and "at /nowhere/pixi-unpack" in wrong.stderr


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="mounting a noexec tmpfs needs root")
def test_self_extractor_runs_from_staging_not_a_noexec_tmp(project: Path, tmp_path: Path) -> None:
    """Login nodes often mount /tmp noexec: the self-extractor executes pixi-unpack from `mktemp -d`."""
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs", str(noexec)], check=True)
    try:
        pack("--create-executable", "-o", str(tmp_path / "env.sh"), str(project), cwd=tmp_path)
        direct = subprocess.run(["bash", str(tmp_path / "env.sh"), "-o", str(tmp_path / "direct")],
                                capture_output=True, text=True, timeout=60, env={**CLEAN_ENV, "TMPDIR": str(noexec)})
        assert direct.returncode != 0 and "Permission denied" in direct.stderr  # the stand-in fails like the real one
        from dagster_slurm.packaging.cache_key import file_sha256
        from dagster_slurm.packaging.packer import PackResult

        script = tmp_path / "env.sh"
        result = PackResult(script, file_sha256(script), script.stat().st_size, extra={"self_extracting": True})
        staging = tmp_path / "base" / "staging"
        ours = _install(_packer(project, None), result, staging, env={"TMPDIR": str(noexec)})
        assert ours.returncode == 0, ours.stderr
        assert run_activated(staging) == "1.0 cpu" and not (staging / ".tmp").exists()
    finally:
        subprocess.run(["umount", str(noexec)], check=False)


def test_no_pixi_unpack_build_for_the_platform_fails_before_packing(project: Path, tmp_path: Path) -> None:
    from dagster_slurm.errors import ConfigurationError

    packer = _packer(project, ["pixi-pack-never-run", "--create-executable", "-o", "{output}"], platform="linux-ppc64le")
    with pytest.raises(ConfigurationError, match="no pixi-unpack build|there is none for linux-ppc64le"):
        packer.pack(tmp_path, print)


def test_greedy_inject_reads_like_pixi_pack_and_every_injected_file_is_in_the_key(project: Path, tmp_path) -> None:
    from dagster_slurm.packaging.cache_key import inject_values, swallowed_values

    cmd = ["pixi-pack", "-i", "a.conda", "b.conda", "--inject=c.whl", "-id.conda", "--inject", "e.conda",
           "pyproject.toml", "-o", "x.sh"]
    assert inject_values(cmd) == ["a.conda", "b.conda", "c.whl", "d.conda", "e.conda", "pyproject.toml"]
    assert swallowed_values(cmd) == ["pyproject.toml"]
    for name in ("a.conda", "b.conda", "c.whl", "d.conda", "e.conda"):
        (tmp_path / name).write_bytes(b"v1 " + name.encode())
    packer = _packer(tmp_path, cmd)
    assert sorted(p.name for p in packer.key_files()) == ["a.conda", "b.conda", "c.whl", "d.conda", "e.conda"]


def test_a_swallowed_project_path_warns_and_still_packs_the_project(project: Path, tmp_path: Path) -> None:
    """`--inject X.conda pyproject.toml`: pixi-pack (and the stand-in) take pyproject.toml as an inject, skip
    it and pack the working directory; the packer runs from the project folder and warns."""
    bin_dir = tmp_path / "bin"
    write_pixi_pack_executables(bin_dir)
    injected = make_custom_package(tmp_path / "pkgs", "extra-lib", "1.0", {"site-packages/extra_lib.py": "X = 1\n"})
    said: list[str] = []
    packer = _packer(project, [str(bin_dir / "pixi-pack"), "--create-executable", "-o", "{output}",
                               "--inject", str(injected), "pixi.toml"])
    (tmp_path / "build").mkdir()
    result = packer.pack(tmp_path / "build", said.append)
    assert any("--inject takes every following value" in s and "'pixi.toml'" in s for s in said)
    assert result.artifact.is_file() and result.extra["self_extracting"] is True


@pytest.mark.parametrize(("version", "lock", "needed"), [("0.6.3", "6", "0.7.1"), ("0.7.0", "6", "0.7.1"),
                                                         ("0.7.5", "7", "0.7.7")])
def test_a_too_old_pixi_pack_is_named_with_the_minimum_and_the_upgrade(tmp_path, monkeypatch, version, lock, needed):
    from dagster_slurm.errors import ConfigurationError

    bin_dir = tmp_path / "bin"
    write_pixi_pack_executables(bin_dir)
    (tmp_path / "pixi.lock").write_text(f"version: {lock}\nenvironments: {{}}\n")
    monkeypatch.setenv("PIXI_PACK_STANDIN_VERSION", version)
    if version < "0.7.0":  # the stand-in answers the current CLI as such a release does: a bare usage error
        old = subprocess.run([str(bin_dir / "pixi-pack"), "-o", "x.tar", str(tmp_path)], capture_output=True, text=True)
        assert old.returncode == 2 and "Usage: pixi-pack <COMMAND>" in old.stderr
    packer = _packer(tmp_path, [str(bin_dir / "pixi-pack"), "--create-executable", "-o", "{output}", "{project}"])
    (tmp_path / "build").mkdir()
    with pytest.raises(ConfigurationError, match=rf"pixi-pack {version} .* needs pixi-pack >= {needed}.*pixi global"):
        packer.pack(tmp_path / "build", print)


def test_offline_packing_needs_a_local_pixi_unpack(project: Path, tmp_path: Path, monkeypatch) -> None:
    from dagster_slurm.errors import ConfigurationError

    write_pixi_pack_executables(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("PIXI_PACK_STANDIN_OFFLINE", "1")  # the download from GitHub fails, as on a closed network
    for build in ("b1", "b2"):
        (tmp_path / build).mkdir()
    with pytest.raises(ConfigurationError, match="failed to download pixi-unpack[\\s\\S]*ComputeResource.pixi_unpack_source"):
        _packer(project, None).pack(tmp_path / "b1", print)
    offline = _packer(project, None, pixi_unpack_source=str(PIXI_UNPACK))  # the default command gets the flag
    assert offline.command(tmp_path)[-3:-1] == ["--pixi-unpack-source", str(PIXI_UNPACK)]
    result = offline.pack(tmp_path / "b2", print)
    assert result.extra["self_extracting"] is True
    assert _install(offline, result, tmp_path / "base" / "staging").returncode == 0
