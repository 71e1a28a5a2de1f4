#!/usr/bin/env bash
# The demo: two HTTP replicas of the demo server, then the gateway on the built-in demo registry, in the
# foreground until Ctrl-C. With DEMO_CHECK=1 it runs the example commands through the gateway and exits
# (the test suite does that, to keep this script true). Ports: DEMO_PORT (8000), MCPFLEET_DEMO_PORT_A/B.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${DEMO_PORT:-8000}
export MCPFLEET_DEMO_PORT_A=${MCPFLEET_DEMO_PORT_A:-8101} MCPFLEET_DEMO_PORT_B=${MCPFLEET_DEMO_PORT_B:-8102}
REPLICAS="$MCPFLEET_DEMO_PORT_A $MCPFLEET_DEMO_PORT_B"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

for port in $REPLICAS; do
  "$BIN/mcpfleet-demo" http --host 127.0.0.1 --port "$port" --replica "replica-$port" 2>/dev/null &
  pids+=($!)
done
for port in $REPLICAS; do wait_port "$port"; done

GW="http://127.0.0.1:$PORT"
cat <<MSG

Try, in another terminal:
  $BIN/mcpfleet servers --gateway $GW
  $BIN/mcpfleet tools demo --gateway $GW
  $BIN/mcpfleet call demo countdown --arg start=3 --gateway $GW
  $BIN/mcpfleet call demo-http whoami --gateway $GW
  curl -s $GW/servers
Any MCP client: $GW/demo/mcp (stdio server) and $GW/demo-http/mcp (two HTTP replicas).

MSG

if [ "${DEMO_CHECK:-0}" = 1 ]; then
  "$BIN/mcpfleet" serve --demo --port "$PORT" &
  pids+=($!)
  wait_port "$PORT"
  run() { printf '\n$ %s\n' "$*"; "$@"; }
  run "$BIN/mcpfleet" servers --gateway "$GW"
  run "$BIN/mcpfleet" call demo echo --arg text="hello through the gateway" --gateway "$GW"
  run "$BIN/mcpfleet" call demo countdown --arg start=3 --gateway "$GW"
  run "$BIN/mcpfleet" call demo-http whoami --gateway "$GW"
  exit 0
fi
"$BIN/mcpfleet" serve --demo --port "$PORT" &
pids+=($!)
wait "${pids[-1]}"   # not exec: the trap must stay, so the replicas stop with the gateway
