#!/usr/bin/env bash
# Test-matrix entry: the engine, backend and tiny-model tests on the LOWEST transformers that
# pyproject.toml allows. A throwaway venv over the installed environment (--system-site-packages)
# gets only that transformers (and whatever it pins) on top; this checkout comes first on the path.
# VEA_LOWEST_VENV picks the venv folder (default: a new temporary one, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
LOW="$("$PY" -c 'import re; print(re.search(r"\"transformers>=([0-9.]+)", open("pyproject.toml").read()).group(1))')"
if [ -n "${VEA_LOWEST_VENV:-}" ]; then
    VENV="$VEA_LOWEST_VENV"
else
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    VENV="$TMP/venv"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
# kernels (the hub-kernels package newer transformers require) moved its API after 0.10: transformers
# 5.3's hub_kernels integration fails to import against the newer one, so that entry pins it too.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "transformers==$LOW" "kernels<0.11"
"$VENV/bin/python" -c "import transformers; from packaging.version import Version as V; assert V(transformers.__version__) == V('$LOW'), transformers.__version__; print('lowest supported transformers', transformers.__version__)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_backends.py tests/test_tiny_models.py
