#!/usr/bin/env bash
# Screenshots of what dagster-slurm shows in the Dagster web UI, written to docs/:
#   docs/ui-asset.png    numbers_summary's latest materialization with its slurm_* metadata
#   docs/ui-failure.png  the failed run of broken_asset with the step failure text
#   docs/ui-check.png    validated_numbers' asset check no_negative_values
#
# Runs the example assets as Slurm jobs on the local test cluster (same set-up as scripts/example.sh,
# so root on Debian), in a throw-away DAGSTER_HOME, then serves that instance with dagster-webserver
# on 127.0.0.1 and photographs it with headless Chromium (`apt-get install -y chromium`).
#
#   scripts/ui_screenshots.sh [OUT_DIR]      (default: docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(realpath -m "${1:-docs}")
WAIT_MS=${UI_SCREENSHOT_WAIT_MS:-15000}  # Chromium's virtual time for the page to load its data
started=$SECONDS

command -v chromium >/dev/null || { echo "ui_screenshots: needs chromium (apt-get install -y chromium)" >&2; exit 1; }
. scripts/bootstrap.sh

# ---------------------------------------------------------------- temp dirs, cleanup
TMP=$(mktemp -d /tmp/dagster-slurm-ui.XXXXXX)
WEB_PID=
cleanup() {
    if [ -n "$WEB_PID" ]; then
        kill "$WEB_PID" 2>/dev/null || true
        wait "$WEB_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
export DAGSTER_HOME=$TMP/dagster_home
mkdir -p "$DAGSTER_HOME" "$OUT_DIR"
# no telemetry, no "Join the Dagster community" pop-up over the screenshots
printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' >"$DAGSTER_HOME/dagster.yaml"

# ---------------------------------------------------------------- environment of scripts/example.sh (slurm mode)
scripts/testcluster.sh start >"$TMP/testcluster-start.log" 2>&1 \
    || { cat "$TMP/testcluster-start.log" >&2; echo "ui_screenshots: the test cluster did not start" >&2; exit 1; }
eval "$(scripts/testcluster.sh env)"
export SLURM_DEPLOYMENT_BASE_PATH="${SLURM_DEPLOYMENT_BASE_PATH:-/home/slurmuser/dagster-slurm}"
export DAGSTER_DEPLOYMENT=staging_docker
# as examples/run_example.py: deploy the payload environment once (a cache hit after the first time)
EXAMPLE_PRE_DEPLOYED_ENV=$(uv run --frozen dagster-slurm deploy --project examples --version example \
    --metadata-out /dev/null | sed -n 's/^CI_DEPLOYED_ENVIRONMENT_PATH=//p')
export EXAMPLE_PRE_DEPLOYED_ENV

# ---------------------------------------------------------------- materialize
# $1 = asset selection, $2 = "fail" if the run must fail as the example's broken payload does.
# A run that fails otherwise (e.g. the cluster was restarted under us) is retried once after a restart.
materialize() {
    local try
    for try in 1 2; do
        echo "ui_screenshots: materializing $1 (try $try)"
        # -d examples: the example's package is imported from there (uv runs the project's venv, from here)
        if uv run --frozen dagster asset materialize -d examples -m example_project.definitions --select "$1" \
            >"$TMP/materialize.log" 2>&1; then
            [ "${2:-}" != fail ] && return 0
            echo "ui_screenshots: $1 was expected to fail but succeeded" >&2; return 1
        fi
        [ "${2:-}" = fail ] && grep -q 'FAILED, exit status' "$TMP/materialize.log" && return 0
        tail -n 30 "$TMP/materialize.log" >&2
        scripts/testcluster.sh start >>"$TMP/testcluster-start.log" 2>&1 || true
    done
    echo "ui_screenshots: materializing $1 failed twice" >&2
    return 1
}
materialize numbers_summary,validated_numbers
materialize numbers_summary,validated_numbers   # twice, so the metadata plots have two points
materialize broken_asset fail

# the failed run of broken_asset
FAILED_RUN=$(uv run --frozen python -c '
import dagster as dg
runs = dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=1)
print(runs[0].run_id)')

# ---------------------------------------------------------------- webserver
# dagster-webserver is not a project dependency: install it beside the project's venv in $TMP (PYTHONPATH),
# pinned to the project's lock, keeping the locked dagster. It is the release of that dagster or the newest
# before it (PyPI may lag: dagster 1.13.29 is locked, dagster-webserver 1.13.28 is the newest there).
DAGSTER_VERSION=$(.venv/bin/python -c 'import dagster; print(dagster.__version__)')
uv export --frozen --no-hashes --no-emit-project --all-extras --format requirements-txt >"$TMP/constraints.txt"
printf 'dagster\ndagster-pipes\ndagster-shared\n' >"$TMP/excludes.txt"
uv pip install --quiet --python .venv/bin/python --target "$TMP/webserver" -c "$TMP/constraints.txt" \
    --excludes "$TMP/excludes.txt" "dagster-webserver>=${DAGSTER_VERSION%.*},<=$DAGSTER_VERSION"
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
# (PYTHONWARNINGS: quiet the version-mismatch warning of dagster-shared)
PYTHONPATH="$TMP/webserver" PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m dagster_webserver -h 127.0.0.1 -p "$PORT" \
    -d examples -m example_project.definitions >"$TMP/webserver.log" 2>&1 &
WEB_PID=$!
for _ in $(seq 120); do
    curl -fsS "$URL/server_info" >/dev/null 2>&1 && break
    kill -0 "$WEB_PID" 2>/dev/null || { cat "$TMP/webserver.log" >&2; exit 1; }
    sleep 1
done
curl -fsS "$URL/server_info" >/dev/null || { cat "$TMP/webserver.log" >&2; exit 1; }

# ---------------------------------------------------------------- screenshots
shot() {  # $1 = file name, $2 = path in the UI, $3 = window size
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$(mktemp -d "$TMP/chromium.XXXXXX")" \
        --hide-scrollbars --window-size="$3" --virtual-time-budget="$WAIT_MS" \
        --screenshot="$OUT_DIR/$1" "$URL$2" >"$TMP/chromium.log" 2>&1 \
        || { cat "$TMP/chromium.log" >&2; return 1; }
    echo "ui_screenshots: $OUT_DIR/$1 <- $2 ($(du -k "$OUT_DIR/$1" | cut -f1) KB)"
}
# latest materialization of numbers_summary with its metadata (slurm_job_id, slurm_elapsed_seconds, ...)
shot ui-asset.png "/assets/numbers_summary?view=events" 1400,1000
# the failed run, its event log filtered to the step failure (SlurmJobError text + Slurm metadata)
shot ui-failure.png "/runs/$FAILED_RUN?logs=type%3ASTEP_FAILURE" 1400,720
# the asset check's latest evaluation (metadata + plot of two evaluations)
shot ui-check.png "/assets/validated_numbers?view=checks" 1400,1000

echo "ui_screenshots: done in $((SECONDS - started)) s"
