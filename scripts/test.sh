#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (DCMTK, dicom3tools,
# Orthanc, PostgreSQL, the venv) and runs ruff and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export TCP_NODELAY=1
pkgs=(dcmtk dicom3tools orthanc postgresql libpixelmed-java)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/setup-venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -ra "$@"
