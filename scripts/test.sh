#!/usr/bin/env bash
# Run the whole test suite: unit tests and integration tests against the real local test cluster
# (Slurm + OpenSSH on loopback, started by scripts/testcluster.sh; needs root and apt on Debian/Ubuntu).
# Under CI=true a cluster that cannot start fails the run instead of skipping the cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
if [ "$(id -u)" = 0 ]; then
    scripts/testcluster.sh start
else
    echo "test.sh: not root, cannot start the test cluster; cluster tests will be skipped (fail under CI)" >&2
fi
uv run --frozen ruff check src tests examples bench
uv run --frozen mypy src
exec uv run --frozen pytest -q -p no:cacheprovider "$@"
