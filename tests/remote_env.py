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
