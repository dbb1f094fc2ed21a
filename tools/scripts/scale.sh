#!/usr/bin/env bash
# scale.sh N — what N concurrent streams cost the example gateway, over loopback.
#
# Builds the release binaries, raises the fd limit, starts the mock upstream (TOKENS content
# tokens DELAY_MS apart, so each stream stays open about TOKENS × DELAY_MS; 16 × 1000 ms by
# default: 19 events over 16 s), and runs loadgen with N clients started evenly over
# RAMP seconds, one stream each, three times:
#
#   gateway   loadgen → gateway (--runtime multi) → mock
#   bypass    loadgen → mock, the same load with the gateway left out
#   per-core  loadgen → gateway (--runtime per-core) → mock
#
# For the gateway runs it samples the gateway process every SAMPLE_SECS: RSS (VmRSS of
# /proc/PID/status), CPU time (utime + stime of /proc/PID/stat) and the open-streams gauge
# `tower_sse_streams_open` of its /metrics. "before" is taken after a warm-up of 20 short
# streams (so one-time allocations do not count as per-stream cost), "peak" is the sample
# with the most open streams, "after" is once the gauge is back to 0.
#
# Reading the output (also written to OUT_DIR: one JSON per run, summary.json, summary.md):
#   open_at_peak       streams the gateway held open at the peak sample
#   rss_per_stream_kb  (RSS at peak − RSS before) / open_at_peak: the whole process's memory
#                      per open stream (both sockets, hyper buffers, tower-sse state, pools)
#   cpu_s              gateway CPU seconds from the start of the load to its end
#   ttfb/ttft p50,p99  loadgen's request-to-head and request-to-first-content times (ms);
#                      gateway minus bypass is what the gateway adds
#   success            ok streams / all streams (no faults are injected here)
#   rss_after_kb       RSS once every stream ended (memory not given back shows here)
# The per-second open-stream samples of each run are in its loadgen JSON.
#
# Environment: TOKENS (16), DELAY_MS (1000), RAMP (N/1000 s, 1 to 30), SAMPLE_SECS (1),
# OUT_DIR (target/load/scale-N-TIME), CARGO_TARGET_DIR, WAIT_QUIET_SECS (300), SKIP_BUILD=1.
# Above 20000 streams, connections are spread over 127.0.0.2, 127.0.0.3, ... as sources.
# Each gateway stream holds two file descriptors: N streams need a limit above 2N + 100.
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

N=${1:?usage: tools/scripts/scale.sh N}
TOKENS=${TOKENS:-16}
DELAY_MS=${DELAY_MS:-1000}
RAMP=${RAMP:-$(awk -v n="$N" 'BEGIN { r = n / 1000; if (r < 1) r = 1; if (r > 30) r = 30; print r }')}
SAMPLE_SECS=${SAMPLE_SECS:-1}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/scale-$N-$(date +%Y%m%d-%H%M%S)}
STREAM_SECS=$(awk -v t="$TOKENS" -v d="$DELAY_MS" 'BEGIN { print t * d / 1000 }')
TIMEOUT=$(awk -v s="$STREAM_SECS" 'BEGIN { print int(s + 60) }')
SOURCE_IPS=$(source_ips "$N")

mkdir -p "$OUT_DIR"
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * N + 100)) ]; then
  echo "warning: fd limit $(ulimit -n) is below 2N + 100 = $((2 * N + 100)): expect accept or connect failures" >&2
fi
if awk -v s="$STREAM_SECS" -v r="$RAMP" 'BEGIN { exit !(s <= r) }'; then
  echo "warning: streams last ${STREAM_SECS}s, not longer than the ${RAMP}s ramp: they will not all be open at once" >&2
fi
wait_until_quiet

start_mock "$OUT_DIR/mock.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
echo "mock upstream on $MOCK_URL; $N streams of ${STREAM_SECS}s, ramp ${RAMP}s; results in $OUT_DIR" >&2

# loadgen URL NAME [FLAGS...]: the load, in the background; sets LOADGEN_PID.
loadgen() {
  local url=$1 name=$2
  shift 2
  "$BIN/loadgen" --url "$url" --streams "$N" --ramp "$RAMP" --timeout "$TIMEOUT" \
    ${SOURCE_IPS:+--source-ips "$SOURCE_IPS"} --quiet --output "$OUT_DIR/$name.loadgen.json" "$@" \
    > "$OUT_DIR/$name.loadgen.txt" 2>&1 &
  LOADGEN_PID=$!
  STARTED_PIDS+=("$LOADGEN_PID")
}

# A few short streams through the gateway, so lazily built state exists before "before".
warm_up() {
  "$BIN/loadgen" --url "$GATEWAY_URL" --streams 20 --tokens 2 --delay-ms 0 --quiet > /dev/null
  wait_for_zero "$GATEWAY_URL" tower_sse_streams_open 10 > /dev/null
}

# measure_gateway NAME FLAGS...: start a gateway, load it, sample it; writes NAME.json.
measure_gateway() {
  local name=$1
  shift
  start_gateway "$OUT_DIR/$name.gateway.log" "$MOCK_URL" --max-streams $((N * 2)) "$@"
  warm_up
  local rss_before cpu_before open rss peak_open=0 rss_peak cpu_peak t_start t_end
  rss_before=$(rss_kb "$GATEWAY_PID")
  rss_peak=$rss_before
  cpu_before=$(cpu_seconds "$GATEWAY_PID")
  cpu_peak=$cpu_before
  t_start=$(date +%s.%N)
  loadgen "$GATEWAY_URL" "$name"
  # Bounded by loadgen's own bound: ramp + timeout.
  while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    open=$(metric "$GATEWAY_URL" tower_sse_streams_open)
    rss=$(rss_kb "$GATEWAY_PID")
    if { [ "$open" -gt "$peak_open" ] || { [ "$open" -eq "$peak_open" ] && [ "$rss" -gt "$rss_peak" ]; }; }; then
      peak_open=$open
      rss_peak=$rss
      cpu_peak=$(cpu_seconds "$GATEWAY_PID")
    fi
    sleep "$SAMPLE_SECS"
  done
  wait "$LOADGEN_PID" || echo "loadgen failed; see $OUT_DIR/$name.loadgen.txt" >&2
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
    --argjson wall "$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { print b - a }')" \
    --slurpfile load "$OUT_DIR/$name.loadgen.json" '
    $load[0] as $l | {
      run: $name, streams: $n, open_at_peak: $open, open_after: $still_open,
      rss_before_kb: $rss_before, rss_peak_kb: $rss_peak, rss_after_kb: $rss_after,
      rss_per_stream_kb: (if $open > 0 then (($rss_peak - $rss_before) / $open * 100 | round) / 100 else null end),
      cpu_s: ((($cpu_after - $cpu_before) * 100 | round) / 100),
      cpu_s_to_peak: ((($cpu_peak - $cpu_before) * 100 | round) / 100),
      wall_s: (($wall * 10 | round) / 10),
      loadgen: ($l | {total, outcomes, success_rate, peak_open, ttfb_ms, ttft_ms, duration_ms})
    }' > "$OUT_DIR/$name.json"
  echo "$name: $(jq -c '{open_at_peak, rss_per_stream_kb, cpu_s, rss_before_kb, rss_peak_kb, rss_after_kb}' "$OUT_DIR/$name.json")" >&2
}

measure_bypass() {
  loadgen "$MOCK_URL" bypass
  wait "$LOADGEN_PID" || echo "loadgen failed; see $OUT_DIR/bypass.loadgen.txt" >&2
  jq --argjson n "$N" '{run: "bypass", streams: $n, loadgen: {total, outcomes, success_rate, peak_open, ttfb_ms, ttft_ms, duration_ms}}' \
    "$OUT_DIR/bypass.loadgen.json" > "$OUT_DIR/bypass.json"
  echo "bypass: $(jq -c '.loadgen | {peak_open, success_rate}' "$OUT_DIR/bypass.json")" >&2
}

measure_gateway gateway --runtime multi
measure_bypass
measure_gateway per-core --runtime per-core

jq -s '.' "$OUT_DIR/gateway.json" "$OUT_DIR/bypass.json" "$OUT_DIR/per-core.json" > "$OUT_DIR/summary.json"
jq -r --arg tokens "$TOKENS" --arg delay "$DELAY_MS" --arg ramp "$RAMP" '
  def ms(x): if x == null then "–" else (x * 100 | round / 100 | tostring) end;
  def or_dash(x): if x == null then "–" else (x | tostring) end;
  "# scale: \(.[0].streams) streams, \($tokens) tokens × \($delay) ms, ramp \($ramp) s\n",
  "| run | open at peak | RSS before (MiB) | RSS peak (MiB) | RSS after (MiB) | RSS/stream (KiB) | CPU s | TTFB p50 / p99 (ms) | TTFT p50 / p99 (ms) | success |",
  "|---|---|---|---|---|---|---|---|---|---|",
  (.[] | "| \(.run) | \(or_dash(.open_at_peak // .loadgen.peak_open)) | \(if .rss_before_kb then ms(.rss_before_kb / 1024) else "–" end) | \(if .rss_peak_kb then ms(.rss_peak_kb / 1024) else "–" end) | \(if .rss_after_kb then ms(.rss_after_kb / 1024) else "–" end) | \(or_dash(.rss_per_stream_kb)) | \(or_dash(.cpu_s)) | \(ms(.loadgen.ttfb_ms.p50)) / \(ms(.loadgen.ttfb_ms.p99)) | \(ms(.loadgen.ttft_ms.p50)) / \(ms(.loadgen.ttft_ms.p99)) | \(.loadgen.success_rate * 10000 | round / 100)% |"),
  "",
  "Gateway runs: open at peak is the gateway gauge tower_sse_streams_open; bypass: loadgen'"'"'s peak of open streams.",
  "RSS/stream = (RSS at peak − RSS before) / open at peak, for the whole gateway process."
  ' "$OUT_DIR/summary.json" | tee "$OUT_DIR/summary.md"
