#!/usr/bin/env bash
# Creates .venv and installs hiprouter with its dependencies (re-runs only when pyproject changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.hiprouter-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision: the regular PyPI builds (they pair with timm's torchvision).
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
