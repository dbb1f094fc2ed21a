#!/usr/bin/env bash
# h2.sh — what HTTP/2 costs the example gateway against HTTP/1.1, on each side, the same load,
# one run.
#
# Builds the release binaries, starts the mock upstream (TOKENS content tokens DELAY_MS apart:
# 16 × 1000 ms by default, so every stream is open at once; HTTP/1.1 and h2c, at most
# N concurrent streams per HTTP/2 connection) and loads a fresh gateway with loadgen, N clients
# (2000) started evenly over RAMP (2 s), one stream each, in these runs:
#
#   client-h1    loadgen (HTTP/1.1, one connection per stream) → gateway → mock (HTTP/1.1)
#   client-h2    loadgen --http2 --streams-per-conn PER_CONN (100: N / 100 connections, each
#                carrying 100 streams, h2c prior knowledge) → gateway → mock (HTTP/1.1)
#   upstream-h2  loadgen (HTTP/1.1) → gateway --upstream-version 2 → mock (h2c): the gateway's
#                pool multiplexes streams on HTTP/2 connections
#
# ROUNDS (2) repeats the three, alternating, so that a noisy machine shows as a spread. With
# CAPPED=1 (default) a last run, upstream-h2-capped, is upstream-h2 against a second mock left
# at hyper's default of 200 concurrent streams per HTTP/2 connection: what the pool does when
# the upstream's limit is below the load (it opens no second connection; the rest wait).
#
# Each run samples the gateway every SAMPLE_SECS (0.5): RSS (VmRSS), CPU (utime + stime), the
# open-streams gauge, and the established TCP connections to the gateway's port (loadgen's)
# and to the mock's port (the gateway's upstream pool), from `ss`. "before" is after a warm-up
# of 20 short streams in the run's own versions.
#
#   open_at_peak         the gauge tower_sse_streams_open at its peak sample
#   client_conns, upstream_conns  the most connections seen at once on each side
#   cpu_ms_per_stream    gateway CPU from the start of the load to its end / streams
#   rss_per_stream_kb    (RSS at the peak sample − RSS before) / open_at_peak
#   loadgen_cpu_s        loadgen's own CPU (the client side of the versions)
#   ttfb/ttft p50,p99    loadgen's request-to-head and request-to-first-content times (ms)
#
# Then the ratio of each HTTP/2 run to client-h1, per round and as the mean of the rounds.
# Output: OUT_DIR (target/load/h2-N-TIME): one JSON per run, summary.json, summary.md.
# Not run by CI.
#
# Environment: N (2000), PER_CONN (100), TOKENS (16), DELAY_MS (1000), RAMP (2), ROUNDS (2),
# CAPPED (1), SAMPLE_SECS (0.5), GATEWAY_FLAGS (extra flags for every gateway), OUT_DIR,
# CARGO_TARGET_DIR, PROFILE, GATEWAY_FEATURES, WAIT_QUIET_SECS (300), SKIP_BUILD=1.
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

N=${N:-2000}
PER_CONN=${PER_CONN:-100}
TOKENS=${TOKENS:-16}
DELAY_MS=${DELAY_MS:-1000}
RAMP=${RAMP:-2}
ROUNDS=${ROUNDS:-2}
CAPPED=${CAPPED:-1}
SAMPLE_SECS=${SAMPLE_SECS:-0.5}
read -r -a EXTRA_FLAGS <<< "${GATEWAY_FLAGS:-}"
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/h2-$N-$(date +%Y%m%d-%H%M%S)}
STREAM_SECS=$(awk -v t="$TOKENS" -v d="$DELAY_MS" 'BEGIN { print t * d / 1000 }')
# The capped run queues streams behind 200 slots: room for all of them, one batch after another.
TIMEOUT=$(awk -v s="$STREAM_SECS" -v n="$N" 'BEGIN { print int(s * (int(n / 200) + 2) + 60) }')

mkdir -p "$OUT_DIR"
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * N + 100)) ]; then
  echo "warning: fd limit $(ulimit -n) is below 2N + 100 = $((2 * N + 100)): expect accept or connect failures" >&2
fi
wait_until_quiet

start_mock "$OUT_DIR/mock.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS" --h2-max-streams $((N * 2))
MOCK_WIDE_URL=$MOCK_URL
if [ "$CAPPED" = 1 ]; then
  start_mock "$OUT_DIR/mock-capped.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
  MOCK_CAPPED_URL=$MOCK_URL
fi
echo "mock upstream on $MOCK_WIDE_URL; $N streams of ${STREAM_SECS}s, ramp ${RAMP}s; results in $OUT_DIR" >&2

port_of() {
  printf '%s' "${1##*:}"
}

# Established TCP connections whose far end is PORT on this machine (one per connection: the
# connecting side's socket).
conns_to() {
  ss -Htn state established "( dport = :$1 )" 2>/dev/null | wc -l
}

# measure NAME UPSTREAM LOADGEN_FLAGS -- GATEWAY_FLAGS...: one run; writes NAME.json.
measure() {
  local name=$1 upstream=$2 loadgen_flags=()
  shift 2
  while [ "$1" != -- ]; do
    loadgen_flags+=("$1")
    shift
  done
  shift
  echo "$name: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  start_gateway "$OUT_DIR/$name.gateway.log" "$upstream" --max-streams $((N * 2)) "${EXTRA_FLAGS[@]}" "$@"
  "$BIN/loadgen" --url "$GATEWAY_URL" --streams 20 --tokens 2 --delay-ms 0 --quiet "${loadgen_flags[@]}" > /dev/null
  wait_for_zero "$GATEWAY_URL" tower_sse_streams_open 10 > /dev/null
  local gw_port up_port
  gw_port=$(port_of "$GATEWAY_URL")
  up_port=$(port_of "$upstream")
  local rss_before cpu_before open rss peak_open=0 rss_peak cpu_peak c u max_c=0 max_u=0 lg_cpu=0 t_start t_end
  rss_before=$(rss_kb "$GATEWAY_PID")
  rss_peak=$rss_before
  cpu_before=$(cpu_seconds "$GATEWAY_PID")
  cpu_peak=$cpu_before
  t_start=$(date +%s.%N)
  "$BIN/loadgen" --url "$GATEWAY_URL" --streams "$N" --ramp "$RAMP" --timeout "$TIMEOUT" --quiet \
    --output "$OUT_DIR/$name.loadgen.json" "${loadgen_flags[@]}" > "$OUT_DIR/$name.loadgen.txt" 2>&1 &
  local loadgen_pid=$!
  STARTED_PIDS+=("$loadgen_pid")
  while kill -0 "$loadgen_pid" 2>/dev/null; do
    open=$(metric "$GATEWAY_URL" tower_sse_streams_open)
    rss=$(rss_kb "$GATEWAY_PID")
    c=$(conns_to "$gw_port")
    u=$(conns_to "$up_port")
    [ "$c" -gt "$max_c" ] && max_c=$c
    [ "$u" -gt "$max_u" ] && max_u=$u
    lg_cpu=$(cpu_seconds "$loadgen_pid" 2>/dev/null || printf '%s' "$lg_cpu")
    if { [ "$open" -gt "$peak_open" ] || { [ "$open" -eq "$peak_open" ] && [ "$rss" -gt "$rss_peak" ]; }; }; then
      peak_open=$open
      rss_peak=$rss
      cpu_peak=$(cpu_seconds "$GATEWAY_PID")
    fi
    sleep "$SAMPLE_SECS"
  done
  wait "$loadgen_pid" || echo "loadgen failed; see $OUT_DIR/$name.loadgen.txt" >&2
  t_end=$(date +%s.%N)
  local still_open cpu_after rss_after
  still_open=$(wait_for_zero "$GATEWAY_URL" tower_sse_streams_open 30)
  cpu_after=$(cpu_seconds "$GATEWAY_PID")
  rss_after=$(rss_kb "$GATEWAY_PID")
  stop_pid "$GATEWAY_PID"
  jq -n --arg name "$name" --argjson n "$N" \
    --argjson rss_before "$rss_before" --argjson rss_peak "$rss_peak" --argjson rss_after "$rss_after" \
    --argjson open "$peak_open" --argjson still_open "${still_open:-0}" \
    --argjson cpu_before "$cpu_before" --argjson cpu_peak "$cpu_peak" --argjson cpu_after "$cpu_after" \
    --argjson client_conns "$max_c" --argjson upstream_conns "$max_u" --argjson loadgen_cpu "$lg_cpu" \
    --argjson wall "$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { print b - a }')" \
    --slurpfile load "$OUT_DIR/$name.loadgen.json" '
    $load[0] as $l | {
      run: $name, streams: $n, open_at_peak: $open, open_after: $still_open,
      client_conns: $client_conns, upstream_conns: $upstream_conns,
      rss_before_kb: $rss_before, rss_peak_kb: $rss_peak, rss_after_kb: $rss_after,
      rss_per_stream_kb: (if $open > 0 then (($rss_peak - $rss_before) / $open * 100 | round) / 100 else null end),
      cpu_s: ((($cpu_after - $cpu_before) * 100 | round) / 100),
      cpu_ms_per_stream: ((($cpu_after - $cpu_before) / $n * 1000 * 1000 | round) / 1000),
      loadgen_cpu_s: $loadgen_cpu,
      wall_s: (($wall * 10 | round) / 10),
      loadgen: ($l | {total, outcomes, success_rate, peak_open, ttfb_ms, ttft_ms, duration_ms})
    }' > "$OUT_DIR/$name.json"
  echo "$name: $(jq -c '{open_at_peak, client_conns, upstream_conns, cpu_ms_per_stream, rss_per_stream_kb, success: .loadgen.success_rate}' "$OUT_DIR/$name.json")" >&2
}

H2_CLIENT=(--http2 --streams-per-conn "$PER_CONN")
RUN_FILES=()
for round in $(seq 1 "$ROUNDS"); do
  measure "client-h1-r$round" "$MOCK_WIDE_URL" --
  measure "client-h2-r$round" "$MOCK_WIDE_URL" "${H2_CLIENT[@]}" --
  measure "upstream-h2-r$round" "$MOCK_WIDE_URL" -- --upstream-version 2
  RUN_FILES+=("$OUT_DIR/client-h1-r$round.json" "$OUT_DIR/client-h2-r$round.json" "$OUT_DIR/upstream-h2-r$round.json")
done
if [ "$CAPPED" = 1 ]; then
  measure upstream-h2-capped "$MOCK_CAPPED_URL" -- --upstream-version 2
  RUN_FILES+=("$OUT_DIR/upstream-h2-capped.json")
fi

jq -s '.' "${RUN_FILES[@]}" > "$OUT_DIR/summary.json"
jq -r --arg tokens "$TOKENS" --arg delay "$DELAY_MS" --arg ramp "$RAMP" --arg per "$PER_CONN" '
  def r2(x): if x == null then "–" else (x * 100 | round / 100 | tostring) end;
  def kind: .run | sub("-r[0-9]+$"; "");
  def mean(f): (map(f) | add / length);
  "# h2: \(.[0].streams) streams, \($tokens) tokens × \($delay) ms, ramp \($ramp) s; HTTP/2 clients: \($per) streams per connection\n",
  "| run | open at peak | client conns | upstream conns | CPU s | CPU ms/stream | RSS before (MiB) | RSS peak (MiB) | RSS/stream (KiB) | loadgen CPU s | TTFB p50 / p99 (ms) | TTFT p50 / p99 (ms) | wall s | success |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  (.[] | "| \(.run) | \(.open_at_peak) | \(.client_conns) | \(.upstream_conns) | \(.cpu_s) | \(.cpu_ms_per_stream) | \(r2(.rss_before_kb / 1024)) | \(r2(.rss_peak_kb / 1024)) | \(.rss_per_stream_kb) | \(.loadgen_cpu_s) | \(r2(.loadgen.ttfb_ms.p50)) / \(r2(.loadgen.ttfb_ms.p99)) | \(r2(.loadgen.ttft_ms.p50)) / \(r2(.loadgen.ttft_ms.p99)) | \(.wall_s) | \(.loadgen.success_rate * 10000 | round / 100)% |"),
  "",
  "Ratios to client-h1 (mean of the rounds):",
  (map(select(kind == "client-h1")) as $base
   | group_by(kind)[] | select(.[0] | kind != "client-h1") as $g
   | "- \($g[0] | kind): CPU/stream × \(r2(mean(.cpu_ms_per_stream) / ($base | mean(.cpu_ms_per_stream)))), RSS/stream × \(r2(mean(.rss_per_stream_kb) / ($base | mean(.rss_per_stream_kb)))), loadgen CPU × \(r2(mean(.loadgen_cpu_s) / ($base | mean(.loadgen_cpu_s))))"),
  "",
  "CPU ms/stream = gateway CPU over the load / streams; RSS/stream = (RSS at peak − RSS before) / open at peak (gauge tower_sse_streams_open).",
  "Connections: the most established TCP connections to the gateway (client) and to the mock (upstream) seen at once."
  ' "$OUT_DIR/summary.json" | tee "$OUT_DIR/summary.md"
