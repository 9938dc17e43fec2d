#!/usr/bin/env bash
# Set everything up (idempotent), then run the main job: build the demo catalogue and its index
# with the default model (reused on a second run), start the server, identify example hums.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/earworm demo "$@"
