#!/usr/bin/env bash
# variance.sh — how steady one stream's duration is over loopback, through the gateway and
# without it.
#
# Starts the mock upstream and the gateway, then drains one 50-event OpenAI Chat stream
# (role chunk, TOKENS content chunks, finish chunk, [DONE]; TOKENS = 47) REPEAT times in a
# row from one client (loadgen --streams 1 --repeat REPEAT, one kept-alive connection, after
# 5 unrecorded warm-up streams so that no connection setup is measured), through the gateway
# and then straight to the mock. DELAY_MS (default 0) spaces the
# content events; at 0 the stream is drained as fast as loopback allows, so the numbers
# are the cost and jitter of the path itself.
#
# Reading the output (also in OUT_DIR/variance.json and the loadgen JSONs):
#   median   the median stream duration, request sent to the end of the body (ms)
#   cv       coefficient of variation of the durations: standard deviation / mean; below
#            0.1 is steady, above 0.3 means the machine or the path is noisy
#   p99,max  the slow tail
#   events   events per stream, to confirm the 50
# "gateway − bypass" medians are what the gateway adds to one whole stream.
#
# Environment: REPEAT (200), TOKENS (47), DELAY_MS (0), RUNTIME (multi or per-core),
# OUT_DIR (target/load/variance-TIME), CARGO_TARGET_DIR, WAIT_QUIET_SECS (300), SKIP_BUILD=1.
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

REPEAT=${REPEAT:-200}
TOKENS=${TOKENS:-47}
DELAY_MS=${DELAY_MS:-0}
RUNTIME=${RUNTIME:-multi}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/variance-$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT_DIR"
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
wait_until_quiet

start_mock "$OUT_DIR/mock.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
start_gateway "$OUT_DIR/gateway.log" "$MOCK_URL" --runtime "$RUNTIME"

# drain NAME URL: REPEAT streams in a row from one client; prints one summary line.
drain() {
  "$BIN/loadgen" --url "$2" --streams 1 --warm-up 5 --repeat "$REPEAT" --timeout 30 --quiet \
    --output "$OUT_DIR/$1.json" > "$OUT_DIR/$1.txt"
  jq -r --arg name "$1" '
    def r(x): x * 1000 | round / 1000;
    "\($name | . + "        " | .[0:8]) streams \(.total)  events/stream \(.events / .total)  ok \(.outcomes.ok)  median \(r(.duration_ms.p50)) ms  cv \(r(.duration_ms.cv))  p99 \(r(.duration_ms.p99)) ms  max \(r(.duration_ms.max)) ms"
  ' "$OUT_DIR/$1.json"
}

echo "$REPEAT sequential streams of $((TOKENS + 3)) events (delay ${DELAY_MS} ms), gateway runtime $RUNTIME"
drain gateway "$GATEWAY_URL"
drain bypass "$MOCK_URL"
jq -n --slurpfile g "$OUT_DIR/gateway.json" --slurpfile b "$OUT_DIR/bypass.json" '
  def pick(x): x | {streams: .total, events_per_stream: (.events / .total), ok: .outcomes.ok,
    median_ms: .duration_ms.p50, cv: .duration_ms.cv, p99_ms: .duration_ms.p99, max_ms: .duration_ms.max};
  {gateway: pick($g[0]), bypass: pick($b[0]),
   gateway_adds_ms: ($g[0].duration_ms.p50 - $b[0].duration_ms.p50)}' > "$OUT_DIR/variance.json"
echo "gateway − bypass median: $(jq '.gateway_adds_ms * 1000 | round / 1000' "$OUT_DIR/variance.json") ms; details in $OUT_DIR"
