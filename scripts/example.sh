#!/usr/bin/env bash
# Run the example pipeline. On a machine where the local test cluster can start (root, Debian/Ubuntu),
# it runs on that cluster as Slurm jobs over SSH; otherwise it runs in local mode. It says which, and why.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
mode=local
if start_test_cluster /tmp/dagster-slurm-testcluster-start.log; then
    eval "$(scripts/testcluster.sh env)"
    export SLURM_DEPLOYMENT_BASE_PATH="${SLURM_DEPLOYMENT_BASE_PATH:-/home/slurmuser/dagster-slurm}"
    mode=slurm
    echo "example.sh: running on the local Slurm test cluster (slurm mode, ssh ${SLURM_EDGE_NODE_USER}@${SLURM_EDGE_NODE_HOST}:${SLURM_EDGE_NODE_PORT})"
else
    echo "example.sh: the local test cluster did not start (see above); running in LOCAL mode"
fi
exec uv run --frozen python examples/run_example.py --mode "$mode"
