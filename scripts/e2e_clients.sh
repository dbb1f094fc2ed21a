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
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai==3.54.0" "anthropic==2.17.0"
if ! command -v curl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq curl
fi

# Built exactly as the README's test command builds it (its packages, features and
# dev-dependencies), so that after that command nothing is rebuilt: a `cargo build` without
# the dev-dependencies unifies other features and rebuilt every dependency a second time.
cargo test --locked --workspace --all-features --no-run
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

echo "--- a stop policy: the OpenAI and Anthropic SDKs end cleanly with the provider's reason"
start_gateway --stop-on .
"$venv/bin/python" scripts/e2e_policy.py stop "$addr"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true

echo "--- --redact: the SDKs stream the text with every match replaced"
start_gateway --redact 'about 🦀' --redact 'über'
"$venv/bin/python" scripts/e2e_policy.py redact "$addr" 'about 🦀|über'
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true
echo "--- --budgets: a tenant over its budget gets the OpenAI SDK's RateLimitError"
budgets=$(mktemp)
echo '{"default": [{"measure": "requests", "amount": 2, "per": 60}]}' > "$budgets"
start_gateway --budgets "$budgets"
"$venv/bin/python" scripts/e2e_budget.py "$addr"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true
echo "--- --budgets with enforce_mid_stream: a stream past its budget raises the OpenAI and Anthropic SDKs' in-stream error"
echo '{"enforce_mid_stream": true, "default": [{"measure": "output_tokens", "amount": 60, "per": "day"}]}' > "$budgets"
start_gateway --budgets "$budgets"
"$venv/bin/python" scripts/e2e_budget.py stop "$addr"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true
rm -f "$budgets"

echo "--- OpenAI Python SDK through the gateway, the first of two upstreams down: failover before the first token"
# target/debug/mock_upstream: built by the `cargo test --no-run` above (its tests/cli.rs runs it).
mock_log=$(mktemp)
"$target_dir/debug/mock_upstream" --listen 127.0.0.1:0 > "$mock_log" 2>&1 &
mock_pid=$!
for _ in $(seq 1 100); do
  mock_addr=$(sed -n 's/^listening on //p' "$mock_log" | head -n 1)
  [ -n "$mock_addr" ] && break
  sleep 0.1
done
[ -n "$mock_addr" ] || { echo "the mock upstream did not start:"; cat "$mock_log"; exit 1; }
# Port 1 on loopback: nothing listens there, the connection is refused.
start_gateway --keep-alive 15 --upstream http://127.0.0.1:1 --upstream "$mock_addr"
"$venv/bin/python" scripts/e2e_openai.py "$addr"
kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true
kill "$mock_pid"; wait "$mock_pid" 2>/dev/null || true
rm -f "$mock_log"

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
echo "3 passed, 0 failed"
