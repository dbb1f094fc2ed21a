#!/usr/bin/env bash
# scale-procs.sh N PROCS — N concurrent streams through PROCS gateway processes sharing one
# port with SO_REUSEPORT, past the per-process file-descriptor ceiling. Not run by CI.
#
# One process holds at most its fd limit (here 20,000, not raisable), and every gateway
# stream holds two descriptors: 9,900 streams is the most one gateway process can hold. So:
#
#   PROCS mock upstreams, each on its own port (one per gateway);
#   PROCS gateways (--runtime per-core --share-port), all listening on one port with SO_REUSEPORT (the
#     kernel spreads the connections over their listeners), each forwarding to its own mock,
#     each with its own metrics listener;
#   PROCS loadgens with N / PROCS clients each, each from its own source address
#     (127.0.0.11, 127.0.0.12, ...), started evenly over RAMP seconds.
#
# Streams are TOKENS content tokens DELAY_MS apart (16 × 2000 ms: 32 s) so that they are all
# open at once after the ramp (N/1000 s, at least 5). Every SAMPLE_SECS it sums over the
# gateways: the open-streams gauge (tower_sse_streams_open), RSS and CPU time. Prints the
# peak, RSS and CPU per stream, loadgen's TTFB/TTFT and success per loadgen, and writes
# summary.json in OUT_DIR (target/load/scale-procs-N-TIME).
#
# SERVER=1 runs PROCS `sse-server`s instead (tools/src/bin/sse-server.rs: an axum SSE server
# behind `SseLayer` with full metering that generates the events itself, no mock, one
# descriptor per stream): the like-for-like of the streaming-daemon benchmarks' servers.
#
# Environment: TOKENS (16), DELAY_MS (2000), RAMP, SAMPLE_SECS (1), OUT_DIR, SKIP_BUILD=1,
# WAIT_QUIET_SECS (300), GATEWAY_FLAGS, SERVER (0).
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

N=${1:?usage: tools/scripts/scale-procs.sh N PROCS}
PROCS=${2:?usage: tools/scripts/scale-procs.sh N PROCS}
TOKENS=${TOKENS:-16}
DELAY_MS=${DELAY_MS:-2000}
RAMP=${RAMP:-$(awk -v n="$N" 'BEGIN { r = n / 1000; if (r < 5) r = 5; print r }')}
SAMPLE_SECS=${SAMPLE_SECS:-1}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/scale-procs-$N-$(date +%Y%m%d-%H%M%S)}
STREAM_SECS=$(awk -v t="$TOKENS" -v d="$DELAY_MS" 'BEGIN { print t * d / 1000 }')
TIMEOUT=$(awk -v s="$STREAM_SECS" -v r="$RAMP" 'BEGIN { print int(s + r + 60) }')
PER=$(((N + PROCS - 1) / PROCS))

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit
FDS_PER_STREAM=2
[ "${SERVER:-0}" = 1 ] && FDS_PER_STREAM=1
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((FDS_PER_STREAM * PER * 12 / 10 + 100)) ]; then
  echo "warning: fd limit $(ulimit -n) is tight for $PER streams per process ($FDS_PER_STREAM each, plus imbalance)" >&2
fi
wait_until_quiet

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOCKS=()
GATEWAYS=()
METRICS=()
for i in $(seq 1 "$PROCS"); do
  if [ "${SERVER:-0}" = 1 ]; then
    # The server generates the events itself: no upstream, one descriptor per stream.
    start_logged "$OUT_DIR/gateway-$i.log" "$BIN/sse-server" --listen "127.0.0.1:$PORT" --share-port \
      --tokens "$TOKENS" --delay-ms "$DELAY_MS" --max-streams $((PER * 2)) --metrics-listen 127.0.0.1:0
  else
    start_mock "$OUT_DIR/mock-$i.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
    MOCKS+=("$MOCK_URL")
    # shellcheck disable=SC2086
    start_logged "$OUT_DIR/gateway-$i.log" "$BIN/gateway" --listen "127.0.0.1:$PORT" --upstream "$MOCK_URL" \
      --runtime per-core --share-port --max-streams $((PER * 2)) --metrics-listen 127.0.0.1:0 ${GATEWAY_FLAGS:-}
  fi
  GATEWAYS+=("$STARTED_PID")
  METRICS+=("$(sed -n 's/^metrics on \(http:[^ ]*\).*/\1/p' "$OUT_DIR/gateway-$i.log" | head -n 1)")
done
URL=http://127.0.0.1:$PORT
if [ "${SERVER:-0}" = 1 ]; then
  echo "$PROCS sse-servers on $URL (SO_REUSEPORT); $N streams ($PER per loadgen) of ${STREAM_SECS}s, ramp ${RAMP}s" >&2
else
  echo "$PROCS gateways on $URL (SO_REUSEPORT), $PROCS mocks; $N streams ($PER per loadgen) of ${STREAM_SECS}s, ramp ${RAMP}s" >&2
fi

# Warm up every gateway (the kernel picks which one serves a connection).
"$BIN/loadgen" --url "$URL" --streams $((20 * PROCS)) --tokens 2 --delay-ms 0 --quiet > /dev/null 2>&1 || true
sleep 1

sum_gateways() { # prints "cpu_s rss_kb open"
  local pid i cpu=0 rss=0 open=0 c
  for pid in "${GATEWAYS[@]}"; do
    c=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
    cpu=$((cpu + c))
    rss=$((rss + $(rss_kb "$pid")))
  done
  for i in "${!METRICS[@]}"; do
    c=$(metric "${METRICS[$i]%/metrics}" tower_sse_streams_open)
    [ "$c" -ge 0 ] && open=$((open + c))
  done
  echo "$(awk -v c="$cpu" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", c / t }') $rss $open"
}

read -r cpu_before rss_before _ <<< "$(sum_gateways)"
LOADGENS=()
load=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq 1 "$PROCS"); do
  "$BIN/loadgen" --url "$URL" --streams "$PER" --ramp "$RAMP" --timeout "$TIMEOUT" \
    --source-ips "127.0.0.$((10 + i))" --quiet --output "$OUT_DIR/loadgen-$i.json" \
    > "$OUT_DIR/loadgen-$i.txt" 2>&1 &
  LOADGENS+=("$!")
  STARTED_PIDS+=("$!")
done
peak_open=0
peak_rss=$rss_before
peak_cpu=$cpu_before
running() {
  local pid
  for pid in "${LOADGENS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
while running; do
  read -r cpu rss open <<< "$(sum_gateways)"
  if [ "$open" -gt "$peak_open" ]; then
    peak_open=$open
    peak_rss=$rss
    peak_cpu=$cpu
  fi
  sleep "$SAMPLE_SECS"
done
for pid in "${LOADGENS[@]}"; do wait "$pid" || true; done
sleep 2
read -r cpu_after rss_after _ <<< "$(sum_gateways)"

jq -s --argjson n "$N" --argjson procs "$PROCS" --arg load "$load" \
  --argjson open "$peak_open" --argjson rss_before "$rss_before" --argjson rss_peak "$peak_rss" \
  --argjson rss_after "$rss_after" --argjson cpu_before "$cpu_before" --argjson cpu_peak "$peak_cpu" \
  --argjson cpu_after "$cpu_after" --arg tokens "$TOKENS" --arg delay "$DELAY_MS" --arg ramp "$RAMP" '
  {
    streams: $n, processes: $procs, loadavg: $load, tokens: $tokens, delay_ms: $delay, ramp_s: $ramp,
    open_at_peak: $open,
    rss_before_kb: $rss_before, rss_peak_kb: $rss_peak, rss_after_kb: $rss_after,
    rss_per_stream_kb: (if $open > 0 then (($rss_peak - $rss_before) / $open * 100 | round) / 100 else null end),
    cpu_s: ((($cpu_after - $cpu_before) * 100 | round) / 100),
    cpu_ms_per_stream: ((($cpu_after - $cpu_before) / $n * 1000 * 1000 | round) / 1000),
    ok: (map(.outcomes.ok // 0) | add), total: (map(.total) | add),
    loadgens: map({total, success_rate, peak_open, ttfb_ms: {p50: .ttfb_ms.p50, p99: .ttfb_ms.p99}, ttft_ms: {p50: .ttft_ms.p50, p99: .ttft_ms.p99}, outcomes})
  }' "$OUT_DIR"/loadgen-*.json | tee "$OUT_DIR/summary.json"
