#!/usr/bin/env bash
# The demo: two HTTP replicas of the demo server on 127.0.0.1:8101 and :8102, then the CLI against the
# built-in demo registry (stdio and HTTP entries). The replicas stop when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for port in 8101 8102; do
  "$BIN/mcpfleet-demo" http --host 127.0.0.1 --port "$port" --replica "replica-$port" 2>/dev/null &
  pids+=($!)
done
for port in 8101 8102; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

run() { printf '\n$ %s\n' "$*"; "$@"; }
run "$BIN/mcpfleet" servers --demo
run "$BIN/mcpfleet" tools demo --demo
run "$BIN/mcpfleet" call demo echo --arg text="hello from stdio" --demo
run "$BIN/mcpfleet" call demo countdown --arg start=3 --demo
run "$BIN/mcpfleet" call demo-http whoami --demo
run "$BIN/mcpfleet" read demo-http demo://readme --demo
printf '\nThe gateway (next issue) will serve these at http://127.0.0.1:8000/<server-id>/mcp.\n'
printf 'Try more: %s/mcpfleet --help\n' "$BIN"
