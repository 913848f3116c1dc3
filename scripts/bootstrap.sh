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
