#!/usr/bin/env bash
# The whole test suite with one core kept busy by another process, as on a contributor's 2-core machine
# that is also building something: every test must assert outcomes, never speed.
# Usage: scripts/test-loaded.sh [pytest arguments]   (make test-loaded)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'while True: pass' &
busy=$!
trap 'kill "$busy" 2>/dev/null || true' EXIT
echo "one core kept busy by pid $busy"
.venv/bin/pytest "$@"
