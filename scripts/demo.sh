#!/usr/bin/env bash
# Set up, start the server on 127.0.0.1:5000 and run the water-detection demo (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aquamask demo "$@"
