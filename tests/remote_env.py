"""Build a minimal pre-deployed environment on the test cluster (pixi-unpack layout: activate.sh + env/).

The interpreter is the cluster's own python3; dagster-pipes (pure Python) is copied from this
machine's installation. Used by integration tests as the ``pre_deployed_env_path``.
"""

from __future__ import annotations

import os
import shlex

import dagster_pipes

ACTIVATE = """\
export CONDA_PREFIX={env}
export PATH={env}/bin:"$PATH"
export PYTHONPATH={env}/lib/site${{PYTHONPATH:+:$PYTHONPATH}}
"""


_PYTHON: dict[str, str] = {}


def cluster_python(transport) -> str:
    """The cluster's python3 as "3.X" (asked once): users' clusters differ (Debian 12: 3.11, 13: 3.13, forky:
    3.14), so no test assumes one."""
    if "v" not in _PYTHON:
        _PYTHON["v"] = transport.run("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").stdout.strip()
    return _PYTHON["v"]


def make_pipes_env(transport, path: str) -> str:
    """Create (idempotently) an environment folder at remote ``path``; return its absolute path."""
    path = transport.absolute(path)
    if transport.stat_size(f"{path}/activate.sh") is not None:
        return path
    env = f"{path}/env"
    transport.run(f"mkdir -p {shlex.quote(env)}/bin {shlex.quote(env)}/lib/site/dagster_pipes && "
                  f"ln -sf \"$(command -v python3)\" {shlex.quote(env)}/bin/python")
    src = os.path.dirname(dagster_pipes.__file__)
    for name in os.listdir(src):
        if name.endswith((".py", ".typed")):
            transport.put_file(os.path.join(src, name), f"{env}/lib/site/dagster_pipes/{name}")
    transport.write_bytes(f"{path}/activate.sh", ACTIVATE.format(env=shlex.quote(env)).encode())
    return path


TORCH_WHEELS = "/opt/wheels"  # this kind of machine keeps a CPU build of torch for Python 3.11 there


def make_torch_env(transport, path: str) -> str:
    """A pre-deployed environment with torch (CPU) and dagster-pipes: a venv built once on the cluster from
    the local torch wheel for the cluster's Python (its dependencies come from PyPI)."""
    tag = "cp" + cluster_python(transport).replace(".", "")
    wheels = sorted(name for name in os.listdir(TORCH_WHEELS) if name.startswith("torch-") and f"+cpu-{tag}" in name) \
        if os.path.isdir(TORCH_WHEELS) else []
    if not wheels:
        raise RuntimeError(f"no CPU torch wheel for the cluster's Python ({tag}) in {TORCH_WHEELS}: the torchrun "
                           "test needs one")
    return make_venv_env(transport, path, [f"{TORCH_WHEELS}/{wheels[-1]}"])


RAY_REQUIREMENT = "ray==2.60.0"


def make_ray_env(transport, path: str) -> str:
    """A pre-deployed environment with Ray and dagster-pipes (a venv built once on the cluster, from PyPI)."""
    return make_venv_env(transport, path, [RAY_REQUIREMENT])


def make_venv_env(transport, path: str, requirements: list[str]) -> str:
    """Create (once) a venv environment at remote ``path`` (activate.sh + env/) with ``requirements``
    pip-installed and dagster-pipes copied from this machine."""
    path = transport.absolute(path)
    if transport.stat_size(f"{path}/activate.sh") is not None:
        return path
    env = f"{path}/env"
    transport.run(f"rm -rf {shlex.quote(path)} && python3 -m venv {shlex.quote(env)} && "
                  f"{shlex.quote(env)}/bin/pip install -q --disable-pip-version-check "
                  + " ".join(shlex.quote(r) for r in requirements), timeout=900)
    site = transport.run(f"{shlex.quote(env)}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'"
                         ).stdout.strip()
    src = os.path.dirname(dagster_pipes.__file__)
    transport.mkdir_p(f"{site}/dagster_pipes")
    for name in os.listdir(src):
        if name.endswith((".py", ".typed")):
            transport.put_file(os.path.join(src, name), f"{site}/dagster_pipes/{name}")
    transport.write_bytes(f"{path}/activate.sh", f". {shlex.quote(env)}/bin/activate\n".encode())
    return path
