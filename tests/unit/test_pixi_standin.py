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
    # .conda needs zstd: the venv python has it (backports.zstd); a bare python3 without a zstd binary fails.
    bare = unpack_tar(tmp_path / "environment.tar", tmp_path / "bare", env={"PATH": "/nonexistent"})
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
