#!/usr/bin/env bash
# Create a virtual environment and install grokscope with its test extras on one TransformerLens line:
# TL_LINE=3 (the default) makes .venv with TransformerLens 3.x (HookedTransformer), TL_LINE=4 makes
# .venv-tl4 with 4.x (TransformerBridge). CPU torch 2.13.0 goes first so that pip does not pull a CUDA
# build to satisfy transformer-lens.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case "${TL_LINE:-3}" in
  3) VENV=.venv; TL_SPEC="transformer-lens>=3,<4"; EXTRAS="test,docs,ray" ;;
  4) VENV=.venv-tl4; TL_SPEC="transformer-lens>=4.3,<5"; EXTRAS="test" ;;
  *) echo "scripts/setup.sh: found TL_LINE=${TL_LINE}; expected 3 or 4" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[$EXTRAS]" "$TL_SPEC"
