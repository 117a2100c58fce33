#!/usr/bin/env bash
# Create .venv and install grokscope with its test extras. CPU torch 2.13.0 goes first so that
# pip does not pull a CUDA build to satisfy transformer-lens.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,docs,ray]"
