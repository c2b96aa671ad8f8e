#!/usr/bin/env bash
# Install, prepare the demo models and serve on http://127.0.0.1:8188 (Ctrl-C stops).
# Extra arguments go to 'genserve up' (e.g. --detach, --port 8189).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genserve models init-demo
exec .venv/bin/genserve up "$@"
