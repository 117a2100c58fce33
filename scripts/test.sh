#!/usr/bin/env bash
# Set up both TransformerLens lines (scripts/setup.sh) and run the whole test suite on each: 3.x in
# .venv, then 4.x in .venv-tl4 (slow end-to-end checks included). Arguments go to pytest.
# Exits non-zero if either run fails; both always run.
set -euo pipefail
cd "$(dirname "$0")/.."
TL_LINE=3 bash scripts/setup.sh
TL_LINE=4 bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # The report test renders report.html in a real headless browser.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; browser tests will be skipped"
fi
status=0
for venv in .venv .venv-tl4; do
  echo "== $(. "$venv/bin/activate" && python -c 'import grokscope.backend as b; print(f"TransformerLens {b.VERSION}")') ($venv)"
  (. "$venv/bin/activate" && python -m pytest -q "$@") || status=$?
done
exit "$status"
