#!/usr/bin/env bash
# Create .venv and install the project with its web page (gradio) and test tools. Safe to rerun: it
# skips the install when pyproject.toml has not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: on this project's machines these wheels come from local disk.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[app,test]"
  # test-only: MTCNN weights for real-photo tests; its metadata pins an old torch, so no deps
  .venv/bin/python -m pip install -q --no-deps "facenet-pytorch==2.6.0"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
