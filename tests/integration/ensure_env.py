"""Helper process: ensure the uv environment of LOCK under BASE exists; print HIT/MISS and its path."""

import sys
from pathlib import Path

from dagster_slurm import SSHConnectionResource
from dagster_slurm.agent import transport_for as get_transport
from dagster_slurm.packaging.cache import ensure_environment
from dagster_slurm.packaging.cache_key import compute_cache_key
from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.packaging.uv_packer import UvPacker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from remote_env import cluster_python  # noqa: E402

if __name__ == "__main__":
    base, lock = sys.argv[1], Path(sys.argv[2])
    transport = get_transport(SSHConnectionResource.from_env().settings())
    packer = UvPacker(lock, "linux-64", cluster_python(transport))
    key = compute_cache_key(lock.read_bytes(), packer.key_command(), packer.platform, [])
    result = ensure_environment(transport, RemoteLayout(base), packer, key, stale_after=1.5,
                                log=lambda m: print(m, file=sys.stderr))
    print("HIT" if result.cache_hit else "MISS", result.path, flush=True)
