#!/usr/bin/env bash
# Sets up the venv if needed and runs the router on the repository's config.yaml
# (embedded defaults: SQLite file and spool under ./var, port 11112, AE title HIPROUTER).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/hiprouter --config config.yaml serve "$@"
