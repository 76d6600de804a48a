#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (DCMTK, dicom3tools,
# Orthanc with its DICOMweb plugin, PostgreSQL, Chromium, npm, the venv) and runs ruff and the
# whole pytest suite.
#
# The OHIF viewer (npm package @ohif/app, version pinned in tests/e2e/ohif.py) is fetched by
# the viewer test's fixture, not here: `npm pack` of that one tarball (its prebuilt dist/, no
# dependencies, no node_modules) into ${HIPROUTER_CACHE:-~/.cache/hiprouter}/ohif/<version>,
# only when the test runs and only once per version; later runs download nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export TCP_NODELAY=1
pkgs=(dcmtk dicom3tools orthanc orthanc-dicomweb postgresql libpixelmed-java chromium)
# npm fetches @ohif/app once; Debian's npm only when no node/npm is installed (NodeSource's
# nodejs package ships its own npm and conflicts with Debian's).
command -v npm >/dev/null || pkgs+=(npm)
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
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
