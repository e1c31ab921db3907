#!/usr/bin/env bash
# Install medseg with its test dependencies, the Debian tools the tests use as independent
# referees and real services (plastimatch, dciodvfy, dcmtk, Chromium, Orthanc; when run as
# root and missing), run the house checks (ruff format, ruff check, mypy; pinned in the test
# extra) and then the whole test suite (as CI does: .ci/run passes no arguments), in
# MEDSEG_TEST_WORKERS processes (default 2, the CI machine's cores; pytest-xdist, one test file
# per process at a time, so a file's module fixtures are made once; 1 runs them in this process).
#   bash scripts/test.sh [pytest args]           # everything
#   bash scripts/test.sh --quick [pytest args]   # local check: skips tests marked slow
# (--quick must come first; the other arguments go to pytest unchanged, a later -m wins.)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [[ "${1:-}" == "--quick" ]]; then
  quick=(-m "not slow")
  shift
fi
need=()
command -v plastimatch >/dev/null || need+=(plastimatch)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v dcmdump >/dev/null || need+=(dcmtk)
command -v chromium >/dev/null || need+=(chromium)
command -v Orthanc >/dev/null || need+=(orthanc)
[[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || need+=(orthanc-dicomweb)
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian tools ${need[*]}: run as root or 'sudo apt-get install ${need[*]}'" >&2
  fi
fi
bash scripts/install.sh --test
# the house checks, before the tests (seconds; a failure names the file and line)
.venv/bin/ruff format --check --quiet .
.venv/bin/ruff check --quiet .
.venv/bin/mypy medseg
workers=(-n "${MEDSEG_TEST_WORKERS:-2}" --dist loadfile)
if [[ "${MEDSEG_TEST_WORKERS:-2}" == 1 ]]; then
  workers=(-p no:xdist)
else
  # each worker gets its share of the cores (medseg caps its thread counts at OMP_NUM_THREADS):
  # two workers of 2 torch threads each on 2 cores spend much of their time in OpenMP's spin
  # waits (measured: the README demo test took 505 s so, beside the other worker)
  share=$(($(nproc) / ${MEDSEG_TEST_WORKERS:-2}))
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((share > 0 ? share : 1))}"
fi
exec .venv/bin/python -m pytest "${workers[@]}" "${quick[@]}" "$@"
