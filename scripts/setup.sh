#!/usr/bin/env bash
# Create .venv and install genserve with its test extras. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP_ARGS=(--disable-pip-version-check -q)
# A CPU build of torch may lie on disk; use it instead of downloading a CUDA build.
if [ -d /opt/wheels ]; then PIP_ARGS+=(--find-links /opt/wheels); fi
# Headless Chromium for the browser test of the trajectory viewer (Debian package; root only).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (browser tests)..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
STAMP=.venv/.genserve-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "installing genserve and its dependencies into .venv (first run takes a few minutes)..." >&2
  .venv/bin/pip install "${PIP_ARGS[@]}" --upgrade pip >/dev/null
  .venv/bin/pip install "${PIP_ARGS[@]}" "torch==2.13.0"
  .venv/bin/pip install "${PIP_ARGS[@]}" -e ".[dev]"
  touch "$STAMP"
fi
