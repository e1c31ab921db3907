#!/usr/bin/env bash
# Install medseg into a project-local virtualenv (.venv), pinned by requirements.lock.
#   bash scripts/install.sh          # runtime only
#   bash scripts/install.sh --test   # plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [[ "${1:-}" == "--test" ]]; then extras="[test]"; fi
python3 -m venv .venv
# requirements.lock pins every package (torch to its CPU build); pip never upgrades past it.
# pip byte-compiles every installed file (about a minute): where PYTHONDONTWRITEBYTECODE is
# set (these machines), nothing is cached at import, so every process would compile torch,
# MONAI and MLflow again (measured: the test suite 200 s slower with --no-compile).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".${extras}" 2> >(grep -v "^WARNING: Location" >&2)
echo "medseg installed in $(pwd)/.venv ($(.venv/bin/medseg --version))"
