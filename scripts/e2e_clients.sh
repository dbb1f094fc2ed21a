#!/usr/bin/env bash
# End-to-end tests with clients nobody here wrote: the official OpenAI Python SDK and curl,
# against the example gateway (the example-gateway package, examples/gateway; it runs the mock
# upstream in-process). Run by .ci/run.
# A client that cannot be installed fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
venv=$target_dir/e2e-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai==3.54.0"
if ! command -v curl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq curl
fi

# The features the README's test command builds with, so that after it nothing is rebuilt.
cargo build --locked --workspace --all-features --bin gateway
log=$(mktemp)
gateway_pid=
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

start_gateway() {
  : > "$log"
  "$target_dir/debug/gateway" --listen 127.0.0.1:0 "$@" > "$log" 2>&1 &
  gateway_pid=$!
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/^listening on //p' "$log" | head -n 1)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "the gateway did not start:"; cat "$log"; exit 1
}

echo "--- OpenAI Python SDK through the gateway"
start_gateway --keep-alive 15
"$venv/bin/python" scripts/e2e_openai.py "$addr"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true

echo "--- curl -N against a stalled upstream: keep-alives, then the idle-timeout error event"
start_gateway --keep-alive 1 --idle-timeout 3
out=$(curl -sN --max-time 20 "$addr/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model":"gpt-mock","stream":true,"messages":[],"mock":{"stall_after":2}}')
printf '%s\n' "$out" | tail -n 6
keep_alives=$(printf '%s\n' "$out" | grep -c '^: keep-alive$' || true)
[ "$keep_alives" -ge 2 ] || { echo "expected keep-alives, saw $keep_alives"; exit 1; }
printf '%s\n' "$out" | grep -q '^event: error$' || { echo "no error event"; exit 1; }
printf '%s\n' "$out" | grep -q '"type":"idle_timeout"' || { echo "not an idle timeout"; exit 1; }
printf '%s\n' "$out" | grep -q 'data: \[DONE\]' && { echo "a stalled stream must not look complete"; exit 1; }
echo "curl: $keep_alives keep-alives, then the idle_timeout error event"

echo "--- the gateway logged one line per finished stream"
grep -c "stream ended" "$log"
echo "2 passed, 0 failed"
