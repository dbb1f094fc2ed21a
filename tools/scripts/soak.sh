#!/usr/bin/env bash
# soak.sh — many streams with faults through the gateway; then: was every stream accounted
# for exactly once, did every gauge come back to 0, did memory come back?
#
# Starts the mock upstream and the gateway (stream limit MAX_STREAMS, idle timeout
# IDLE_TIMEOUT s, keep-alive every KEEP_ALIVE s), warms the gateway up with one stream per
# client, takes its RSS as the baseline, then runs loadgen: CLIENTS clients streaming back to back for HOLD s (after a
# RAMP s ramp), each stream with probability FAULTS of one injected fault: the mock stalls
# (the gateway's idle timeout ends it), sends an in-band error, or aborts the connection in
# the middle of an event, or the client hangs up after a few events. With MAX_STREAMS below
# CLIENTS, some requests are rejected with 503 (a rejected client waits 250 ms). The run
# takes about RAMP + HOLD + 10 s, plus the wait for a quiet machine.
#
# Checks, one PASS/FAIL line each (the exit status is 1 if any failed):
#   requests       every request loadgen got through to the gateway reached its stream stack:
#                  loadgen's streams − its connect failures = gateway_requests
#   accounting     every stream the gateway handled as a stream ended with exactly one report:
#                  sum of tower_sse_streams_ended over outcomes = gateway_requests − loadgen's
#                  503s − its other non-2xx answers (the honest count of streams: requests that
#                  reached the gateway, minus those refused before any stream began)
#   upstream       the same count from the upstream side: tower_sse_streams_ended =
#                  gateway_upstream_streams (upstream answers that began a stream)
#   gauges         tower_sse_streams_open and tower_sse_limit_open_streams are back to 0
#   faults         as the client saw it (loadgen): every faulted, admitted stream ended the way
#                  its fault should end it (stall, in-band error, upstream close → error-event:
#                  the gateway's own, or the provider's error event passed through; hang-up →
#                  client-disconnect), and no unfaulted stream failed except by a 503
#   outcome:KIND   as the gateway reported it, one for one: for each fault kind, the streams
#                  loadgen injected with it that the gateway admitted (injected − 503s − other
#                  statuses − connect failures) = the soak's increase of
#                  tower_sse_streams_ended{outcome=…} for the outcome that fault must give:
#                    stall             → idle_timeout (the gateway's idle timeout ends it)
#                    upstream-error    → provider_error (the mock's in-band error event: an
#                                        OpenAI chunk with a top-level "error" object)
#                    upstream-close    → upstream_error (the upstream body fails mid-event)
#                    client-disconnect → client_disconnected
#                    unfaulted         → completed
#                  and no other outcome increased (outcome:other = 0)
#   memory         RSS after the soak ≤ warm baseline + RSS_TOLERANCE_MB (default 16 MiB) +
#                  0.6 KiB per digest-registry record the soak added (the registry keeps up
#                  to 10k records for 10 minutes by design; about 600 B each, measured).
#                  The warm baseline is taken after one stream per client at full
#                  concurrency: glibc's allocator keeps memory a burst freed (RSS stays near
#                  its high-water mark while the live heap goes back down), so a baseline
#                  taken cold would only measure that. Both readings are taken right after
#                  a load ends, with the same idle upstream connections pooled. The cold RSS
#                  is printed too. A FAIL means RSS grew during the soak: a leak, or
#                  fragmentation creep; a heap profile tells which.
# The mock upstream's own request counter is not exposed by mock_upstream, hence the
# gateway's two counters (gateway_requests before the limit, gateway_upstream_streams in its
# upstream client) and loadgen's outcome counts as the independent sides.
#
# Environment: CLIENTS (200), HOLD (60), RAMP (5), TOKENS (8), DELAY_MS (50), FAULTS (0.2),
# MAX_STREAMS (CLIENTS × 3/4), IDLE_TIMEOUT (2), KEEP_ALIVE (1), RSS_TOLERANCE_MB (16),
# RUNTIME (multi or per-core), OUT_DIR (target/load/soak-TIME), CARGO_TARGET_DIR,
# WAIT_QUIET_SECS (300), SKIP_BUILD=1. Details per run are in OUT_DIR.
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

CLIENTS=${CLIENTS:-200}
HOLD=${HOLD:-60}
RAMP=${RAMP:-5}
TOKENS=${TOKENS:-8}
DELAY_MS=${DELAY_MS:-50}
FAULTS=${FAULTS:-0.2}
MAX_STREAMS=${MAX_STREAMS:-$((CLIENTS * 3 / 4))}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-2}
KEEP_ALIVE=${KEEP_ALIVE:-1}
RSS_TOLERANCE_MB=${RSS_TOLERANCE_MB:-16}
RUNTIME=${RUNTIME:-multi}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/soak-$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT_DIR"

# outcomes_snapshot URL: one "OUTCOME COUNT" line per outcome label of
# tower_sse_streams_ended in the gateway's /metrics (summed over any other labels); nothing
# when /metrics cannot be read (the outcome checks then fail, they never pass by accident).
outcomes_snapshot() {
  curl -sf --max-time 5 "$1/metrics" | awk '
    index($1, "tower_sse_streams_ended{") == 1 && match($1, /outcome="[^"]*"/) {
      sum[substr($1, RSTART + 9, RLENGTH - 10)] += $NF
    }
    END { for (o in sum) printf "%s %d\n", o, sum[o] }' | sort
}

# soak_deltas: "OUTCOME +N" for every outcome that grew in the soak.
soak_deltas() {
  local outcome
  for outcome in $(awk '{ print $1 }' "$OUT_DIR/outcomes-after.txt"); do
    [ "$(outcome_delta "$outcome")" -gt 0 ] && printf '%s +%d  ' "$outcome" "$(outcome_delta "$outcome")"
  done
  return 0
}

# outcome_delta OUTCOME: how much tower_sse_streams_ended{outcome=OUTCOME} grew in the soak.
outcome_delta() {
  local before after
  before=$(awk -v o="$1" '$1 == o { print $2 }' "$OUT_DIR/outcomes-before.txt")
  after=$(awk -v o="$1" '$1 == o { print $2 }' "$OUT_DIR/outcomes-after.txt")
  printf '%d' $((${after:-0} - ${before:-0}))
}
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit
wait_until_quiet

start_mock "$OUT_DIR/mock.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
start_gateway "$OUT_DIR/gateway.log" "$MOCK_URL" --runtime "$RUNTIME" \
  --max-streams "$MAX_STREAMS" --idle-timeout "$IDLE_TIMEOUT" --keep-alive "$KEEP_ALIVE"
echo "mock $MOCK_URL, gateway $GATEWAY_URL (limit $MAX_STREAMS, idle timeout ${IDLE_TIMEOUT}s); results in $OUT_DIR" >&2

# Warm up: one stream per client at full concurrency (no faults), so that the baseline
# holds what the gateway builds once and the allocator's high-water mark for this load.
rss_cold=$(rss_kb "$GATEWAY_PID")
"$BIN/loadgen" --url "$GATEWAY_URL" --streams "$CLIENTS" --ramp "$RAMP" --timeout 60 --quiet \
  --output "$OUT_DIR/warm-up.json" > /dev/null
wait_for_zero "$GATEWAY_URL" tower_sse_streams_open 10 > /dev/null
sleep 1
rss_before=$(rss_kb "$GATEWAY_PID")
ended_before=$(metric "$GATEWAY_URL" tower_sse_streams_ended)
requests_before=$(metric "$GATEWAY_URL" gateway_requests)
upstream_before=$(metric "$GATEWAY_URL" gateway_upstream_streams)
outcomes_snapshot "$GATEWAY_URL" > "$OUT_DIR/outcomes-before.txt" || true

# The soak, with the peak RSS sampled once a second.
"$BIN/loadgen" --url "$GATEWAY_URL" --streams "$CLIENTS" --ramp "$RAMP" --hold "$HOLD" \
  --faults "$FAULTS" --timeout 60 --quiet --output "$OUT_DIR/loadgen.json" \
  > "$OUT_DIR/loadgen.txt" 2>&1 &
loadgen_pid=$!
STARTED_PIDS+=("$loadgen_pid")
rss_peak=$rss_before
while kill -0 "$loadgen_pid" 2>/dev/null; do
  rss=$(rss_kb "$GATEWAY_PID")
  [ "$rss" -gt "$rss_peak" ] && rss_peak=$rss
  sleep 1
done
wait "$loadgen_pid" || { echo "loadgen failed:" >&2; cat "$OUT_DIR/loadgen.txt" >&2; exit 1; }
cat "$OUT_DIR/loadgen.txt"

# Let the last streams end (stalled ones end at the idle timeout), then read the gateway.
streams_open=$(wait_for_zero "$GATEWAY_URL" tower_sse_streams_open 30)
limit_open=$(wait_for_zero "$GATEWAY_URL" tower_sse_limit_open_streams 10)
ended=$(($(metric "$GATEWAY_URL" tower_sse_streams_ended) - ended_before))
requests=$(($(metric "$GATEWAY_URL" gateway_requests) - requests_before))
upstream=$(($(metric "$GATEWAY_URL" gateway_upstream_streams) - upstream_before))
curl -sf "$GATEWAY_URL/metrics" | grep -E '^(tower_sse_streams|tower_sse_limit|gateway_)' > "$OUT_DIR/metrics-after.txt" || true
outcomes_snapshot "$GATEWAY_URL" > "$OUT_DIR/outcomes-after.txt" || true
sleep 1
rss_after=$(rss_kb "$GATEWAY_PID")

load=$OUT_DIR/loadgen.json
total=$(jq '.total' "$load")
connect=$(jq '.outcomes.connect' "$load")
rejected=$(jq '.outcomes.rejected' "$load")
status=$(jq '.outcomes.status' "$load")
handled=$((requests - rejected - status))
# Faulted streams that were admitted but did not end the way their fault should.
misfaulted=$(jq '[.faults | to_entries[] | .key as $fault | .value.outcomes | to_entries[]
  | select(.key != "rejected")
  | select(.key != (if $fault == "client-disconnect" then "client-disconnect" else "error-event" end))
  | .value] | add // 0' "$load")
# Unfaulted streams that neither ended ok nor were rejected.
unfaulted_failed=$(jq '[.unfaulted_outcomes | to_entries[] | select(.key != "ok" and .key != "rejected") | .value] | add // 0' "$load")
new_records=$((handled < 10000 ? handled : 10000))
tolerance_kb=$((RSS_TOLERANCE_MB * 1024 + new_records * 6 / 10))

failed=0
# check NAME HOLDS DETAIL: one PASS or FAIL line; HOLDS is 1 when the check holds.
check() {
  if [ "$2" = 1 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; failed=1; fi
}
check requests $((total - connect == requests)) \
  "loadgen sent $total, $connect failed to connect; the gateway counted $requests requests"
check accounting $((ended == handled)) \
  "$ended end reports = $requests requests − $rejected rejected (503) − $status other statuses = $handled streams"
check upstream $((ended == upstream)) \
  "$ended end reports, $upstream upstream answers that began a stream"
check gauges $((streams_open == 0 && limit_open == 0)) \
  "tower_sse_streams_open $streams_open, tower_sse_limit_open_streams $limit_open"
check faults $((misfaulted == 0 && unfaulted_failed == 0)) \
  "$misfaulted faulted streams ended unexpectedly, $unfaulted_failed unfaulted streams failed (503s aside)"
# Each fault kind against the gateway's end reports, one for one.
# admitted OUTCOMES_JSON_PATH: loadgen's streams there minus those the gateway never began
# (503s, other statuses, connect failures).
admitted() {
  jq "$1 | .outcomes as \$o | .injected - ((\$o.rejected // 0) + (\$o.status // 0) + (\$o.connect // 0))" "$load"
}
for pair in stall:idle_timeout upstream-error:provider_error upstream-close:upstream_error \
  client-disconnect:client_disconnected; do
  fault=${pair%%:*} outcome=${pair#*:}
  want=$(admitted ".faults[\"$fault\"]")
  got=$(outcome_delta "$outcome")
  check "outcome:$fault" $((want == got)) \
    "$want admitted streams injected with $fault, $got ended $outcome"
done
unfaulted_admitted=$(jq '.unfaulted_outcomes as $o | .unfaulted - (($o.rejected // 0) + ($o.status // 0) + ($o.connect // 0))' "$load")
completed=$(outcome_delta completed)
check outcome:unfaulted $((unfaulted_admitted == completed)) \
  "$unfaulted_admitted admitted streams without a fault, $completed ended completed"
others=$(($(awk '{ s += $2 } END { printf "%d", s }' "$OUT_DIR/outcomes-after.txt") \
  - $(awk '{ s += $2 } END { printf "%d", s }' "$OUT_DIR/outcomes-before.txt") \
  - $(outcome_delta idle_timeout) - $(outcome_delta provider_error) - $(outcome_delta upstream_error) \
  - $(outcome_delta client_disconnected) - completed))
check outcome:other $((others == 0)) \
  "$others streams ended with another outcome"
check memory $((rss_after <= rss_before + tolerance_kb)) \
  "RSS cold $((rss_cold / 1024)) MiB, warm baseline $((rss_before / 1024)) MiB, peak $((rss_peak / 1024)) MiB, after $((rss_after / 1024)) MiB (allowed up to $(((rss_before + tolerance_kb) / 1024)) MiB)"
echo "ended by outcome in the soak: $(soak_deltas)"
echo "ended by outcome (warm-up included): $(grep '^tower_sse_streams_ended' "$OUT_DIR/metrics-after.txt" | sed 's/tower_sse_streams_ended//' | tr '\n' ' ')"
exit "$failed"
