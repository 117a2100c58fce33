#!/usr/bin/env bash
# Set up, train the `fast` preset (groks in about a minute on 2 CPU cores), then analyse it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
grokscope train --preset fast --out runs/fast
grokscope analyze runs/fast
