"""The uv packer: resolve uv.lock for the cluster's platform, ship binary wheels plus a static uv,
and build a venv on the cluster from its own Python, offline.

Wheels live in one shared store on the cluster (``wheels/``); a wheel already there is never
uploaded again, so changing one dependency uploads about one wheel.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.cache_key import file_sha256
from dagster_slurm.packaging.inventory import TOOLS_USED, WHEELS_USED
from dagster_slurm.packaging.locks import CACHE_HOME, local_lock
from dagster_slurm.packaging.packer import Log, PackResult, RemoteLayout
from dagster_slurm.packaging.run_local import run_build_command
from dagster_slurm.packaging.upload import upload_with_progress

ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
MANYLINUX = "2_28"  # glibc >= 2.28; manylinux2014 lacks current numpy


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def uv_version() -> str:
    out = subprocess.run([uv_bin(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def parse_pins(requirements: str) -> list[tuple[str, str]]:
    """``name==version`` lines of a compiled requirements file (comments, options and markers dropped)."""
    pins = []
    for line in requirements.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if not m:
            raise ConfigurationError(
                f"uv packer: cannot ship {line!r}: only pinned packages from an index can be packed as wheels "
                "(no editable, path or URL requirements)."
            )
        pins.append((m.group(1), m.group(3)))
    return pins


class UvPacker:
    name = "uv"

    def __init__(self, lockfile: Path, platform: str, python_version: str, remote_python: str = "python3",
                 timeout: float = 3600):
        if platform not in ARCH:
            raise ConfigurationError(f"uv packer: unsupported platform {platform!r}; use one of {sorted(ARCH)}.")
        self.lockfile = lockfile
        self.project = lockfile.parent
        self.platform = platform
        self.arch = ARCH[platform]
        self.python_version = python_version
        self.remote_python = remote_python
        self.timeout = timeout

    @property
    def target(self) -> str:
        return f"{self.arch}-manylinux_{MANYLINUX}"

    def key_command(self) -> list[str]:
        return ["uv-packer", self.target, f"python={self.python_version}", f"remote_python={self.remote_python}"]

    def key_files(self) -> list[Path]:
        return []

    # -- local
    def pack(self, build_dir: Path, log: Log) -> PackResult:
        uv = uv_bin()
        exported = build_dir / "requirements.in"
        run_build_command([uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes",
                           "--no-header", "--project", str(self.project), "-o", str(exported)],
                          self.project, "uv packer (uv export of uv.lock)", self.timeout)
        resolved = build_dir / "requirements.txt"
        run_build_command([uv, "pip", "compile", str(exported), "--python-platform", self.target,
                           "--python-version", self.python_version, "--only-binary", ":all:", "--no-header",
                           "--quiet", "-o", str(resolved)],
                          self.project, f"uv packer (resolving uv.lock for {self.target}, Python "
                          f"{self.python_version})", self.timeout)
        wheels = self._download_wheels(parse_pins(resolved.read_text()), build_dir, log)
        uv_remote = self._uv_binary(log)
        manifest = build_dir / "wheels.sha256"
        manifest.write_text("".join(f"{file_sha256(w)}  {w.name}\n" for w in wheels))
        size = sum(w.stat().st_size for w in wheels)
        return PackResult(resolved, file_sha256(resolved), size,
                          {"wheels": wheels, "manifest": manifest, "uv": uv_remote})

    def _download_wheels(self, pins: list[tuple[str, str]], build_dir: Path, log: Log) -> list[Path]:
        store = CACHE_HOME / "wheels" / f"{self.target}-cp{self.python_version.replace('.', '')}"
        store.mkdir(parents=True, exist_ok=True)
        reqs = build_dir / "pins.txt"
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in pins))
        with local_lock("wheels-" + store.name, 600):
            missing = [p for p in pins if not self._find_wheel(store, *p)]
            if missing:
                log(f"Downloading {len(missing)} wheel(s) for {self.target}")
                run_build_command(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                     "--platform", f"manylinux_{MANYLINUX}_{self.arch}", "--python-version", self.python_version,
                     "--implementation", "cp", "-d", str(store), "-r", str(reqs)],
                    self.project, "uv packer (downloading wheels)", self.timeout)
        wheels = []
        for name, version in pins:
            wheel = self._find_wheel(store, name, version)
            if wheel is None:
                raise ConfigurationError(f"uv packer: no binary wheel of {name}=={version} for {self.target}.")
            wheels.append(wheel)
        return wheels

    @staticmethod
    def _find_wheel(store: Path, name: str, version: str) -> Path | None:
        prefix = f"{_norm(name)}-{version}-"
        for path in store.glob("*.whl"):
            if _norm(path.name.split("-", 1)[0]) + "-" + path.name.split("-")[1] + "-" == prefix:
                return path
        return None

    def _uv_binary(self, log: Log) -> Path:
        """The static (musl) uv binary for the cluster's architecture, from uv's PyPI wheel."""
        version = uv_version()
        dest = CACHE_HOME / "uv" / f"{version}-{self.arch}" / "uv"
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with local_lock(f"uv-{version}-{self.arch}", 600):
            if dest.is_file():
                return dest
            log(f"Fetching the static uv {version} binary for {self.arch}")
            run_build_command(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                 "--platform", f"musllinux_1_1_{self.arch}", "-d", str(dest.parent), f"uv=={version}"],
                self.project, "uv packer (downloading uv)", self.timeout)
            wheel = next(dest.parent.glob("uv-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith("/scripts/uv"))
                tmp = dest.with_suffix(".tmp")
                tmp.write_bytes(zf.read(member))
            tmp.chmod(0o755)
            tmp.rename(dest)
            wheel.unlink()
        return dest

    # -- remote
    def remote_uv(self, layout: RemoteLayout, result: PackResult) -> str:
        return f"{layout.tools}/uv-{result.extra['uv'].parent.name}"

    def upload(self, transport, result: PackResult, layout: RemoteLayout, staging: str, log: Log) -> dict[str, float]:
        transport.mkdir_p(layout.wheels)
        transport.mkdir_p(layout.tools)
        present = set(transport.listdir(layout.wheels) or [])
        uploaded = reused = upload_bytes = 0
        for wheel in result.extra["wheels"]:
            if wheel.name in present:
                reused += 1
                continue
            upload_with_progress(transport, wheel, f"{layout.wheels}/{wheel.name}", log)
            uploaded += 1
            upload_bytes += wheel.stat().st_size
        uv_local, uv_remote = result.extra["uv"], self.remote_uv(layout, result)
        if transport.stat_size(uv_remote) is None:
            upload_with_progress(transport, uv_local, uv_remote, log)
            upload_bytes += uv_local.stat().st_size
        transport.put_file(str(result.artifact), f"{staging}/.artifact/requirements.txt")
        transport.put_file(str(result.extra["manifest"]), f"{staging}/.artifact/wheels.sha256")
        log(f"Wheels: {uploaded} uploaded, {reused} already on the cluster.")
        return {"wheels_uploaded": uploaded, "wheels_reused": reused, "upload_bytes": upload_bytes}

    def install_script(self, result: PackResult, layout: RemoteLayout, staging: str) -> str:
        q = shlex.quote
        uv = q(self.remote_uv(layout, result))
        art = f"{q(staging)}/.artifact"
        want = self.python_version
        check = (
            "import platform, sys\n"
            f"want = tuple(int(x) for x in {want!r}.split('.'))\n"
            "have = sys.version_info[:len(want)]\n"
            "libc, ver = platform.libc_ver()\n"
            "glibc = tuple(int(x) for x in ver.split('.')[:2]) if libc == 'glibc' and ver else (0, 0)\n"
            "problems = []\n"
            "if have != want: problems.append('it is Python %s but the environment was resolved for Python "
            f"{want} (set ComputeResource.remote_python or python_version)' % platform.python_version())\n"
            f"if glibc < (2, {MANYLINUX.split('_')[1]}): problems.append('its glibc is %s but the wheels need "
            f"glibc >= 2.{MANYLINUX.split('_')[1]} (manylinux_{MANYLINUX})' % (ver or libc or 'unknown'))\n"
            "if problems: sys.exit('dagster-slurm: remote python ' + sys.executable + ': ' + '; '.join(problems))\n"
        )
        missing = q(f"dagster-slurm: the remote python {self.remote_python!r} was not found on the cluster: set "
                    "ComputeResource.remote_python to an existing interpreter (e.g. /usr/bin/python3 or a "
                    "module-provided one)")
        return "\n".join([
            f"PY=$(command -v {q(self.remote_python)}) || {{ echo {missing} >&2; exit 43; }}",
            f"\"$PY\" -c {q(check)}",
            f"(cd {q(layout.wheels)} && sha256sum -c --quiet {art}/wheels.sha256) || "
            "{ echo 'dagster-slurm: checksum mismatch in the wheel store: nothing was installed' >&2; exit 41; }",
            # no uv cache: every environment owns its files, so gc frees what it deletes (home quotas)
            "export UV_NO_CACHE=1 UV_NO_PROGRESS=1 UV_PYTHON_DOWNLOADS=never",
            f"{uv} venv --quiet --python \"$PY\" {q(staging)}/env",
            f"{uv} pip install --quiet --offline --no-index --find-links {q(layout.wheels)} "
            f"--python {q(staging)}/env/bin/python -r {art}/requirements.txt",
            # what this environment needs from the shared stores, for gc
            f"cut -d' ' -f3 {art}/wheels.sha256 > {q(staging)}/{WHEELS_USED}",
            f"printf '%s\\n' {q(self.remote_uv(layout, result).rsplit('/', 1)[1])} > {q(staging)}/{TOOLS_USED}",
            f"cat > {q(staging)}/activate.sh <<'DAGSTER_SLURM_EOF'\n"
            f"export VIRTUAL_ENV={q(staging)}/env\n"
            "export PATH=\"$VIRTUAL_ENV/bin:$PATH\"\n"
            "DAGSTER_SLURM_EOF",
        ])
