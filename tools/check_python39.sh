#!/usr/bin/env bash
# The engine's torch-free parts and the module's install logic on Python 3.9 (Slicer 5.8's Python): every source
# file compiles under 3.9, and the tests marked `torchfree` (job protocol, settings blocks, configs, guard rule,
# locks, first-use install) pass there. torch no longer ships wheels for 3.9 and slicer-core has none, so the tests
# that need them run on the main interpreter only (README, "Python versions").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON39=${PYTHON39:-}
if [ -z "$PYTHON39" ]; then
    for candidate in python3.9 "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/3.9*/bin/python3.9; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 9)' >/dev/null 2>&1; then
            PYTHON39=$candidate
            break
        fi
    done
fi
if [ -z "$PYTHON39" ]; then
    # Not a failure of the project: this machine lacks the interpreter. Said loudly, never silently passed.
    echo "check_python39: NOT RUN: no Python 3.9 interpreter here (set PYTHON39=/path/to/python3.9)" >&2
    exit 0
fi
if [ ! -x .venv39/bin/python ]; then
    "$PYTHON39" -m venv .venv39
fi
.venv39/bin/python -m pip install --quiet "numpy<2.1" "scipy<1.14" "pytest>=7" "jsonschema>=4.18"
.venv39/bin/python -m compileall -q ASSFTActive ASSFTModule ASSFTWeb Testing tools scripts >/dev/null
# Only the marked modules are collected: the others import torch or slicer at the top.
mapfile -t modules < <(grep -l '^pytestmark = pytest.mark.torchfree' Testing/Python/test_*.py)
.venv39/bin/python -m pytest -q -p no:cacheprovider -m torchfree "${modules[@]}"
