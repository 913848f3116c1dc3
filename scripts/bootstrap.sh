#!/usr/bin/env bash
# Shared set-up for scripts/test.sh and scripts/example.sh: uv, the project's locked venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
    echo "bootstrap: installing uv with pip" >&2
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
    export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet

# start_test_cluster LOG: scripts/testcluster.sh start, its output in LOG. On failure, print the line that says
# why (the first error of the script, or of a daemon's log it quoted) and LOG's path, and return 1.
start_test_cluster() {
    local log=$1 why
    if [ "$(id -u)" != 0 ]; then
        echo "the local test cluster needs root (it installs Debian packages and starts Slurm's daemons)" >"$log"
        echo "test cluster: not started: $(cat "$log")" >&2
        return 1
    fi
    if scripts/testcluster.sh start >"$log" 2>&1; then return 0; fi
    why=$(grep -m 1 -iE 'error|did not|failed|not running|cannot|unable' "$log" || tail -n 1 "$log")
    echo "test cluster: did not start: ${why#testcluster: }" >&2
    # the daemon's own words, when the script quoted its log
    grep -v '^testcluster:' "$log" | grep -m 1 -iE 'fatal|error' | sed 's/^/test cluster:   /' >&2 || true
    echo "test cluster: full log: $log" >&2
    return 1
}
