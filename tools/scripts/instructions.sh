#!/usr/bin/env bash
# instructions.sh — the gateway's own user-space instructions per stream, counted by callgrind
# under a real load: a before/after that does not move with the machine, where CPU seconds on
# a shared VM move by 5–10% from one run to the next.
#
# Starts the mock upstream, then the gateway under `valgrind --tool=callgrind`, counting only
# inside the tasks of tokio's worker threads (`--toggle-collect` on the worker's `run_task`:
# start-up is not counted), warms it up with 60 streams, loads it with loadgen and prints the instructions per
# stream (the warm-up's streams included in the count and the divisor).
#
#   LOAD=short  (default) two-token streams over reused connections: what a stream costs
#               whatever its length (CLIENTS 50 × REPEAT 40 = 2,000 streams)
#   LOAD=long   16-token streams 5 ms apart: the per-event cost too (200 × 5 = 1,000)
#
# Environment: STACK (full | bare; default full), GATEWAY (a gateway binary, default the
# release build of this tree), LOAD, CLIENTS, REPEAT, GATEWAY_FLAGS, LOADGEN_FLAGS (more
# loadgen flags for the warm-up and the load, e.g. `--header 'authorization: Bearer sk-1'`
# so that every stream has a tenant), GATEWAY_FEATURES
# (`tuned`: the build BENCHMARKS.md's figures were measured with), OUT_DIR, SKIP_BUILD=1,
# PRIME (default 0: none; streams run one at a time before the warm-up, then the counts are
# zeroed with `callgrind_control --zero`, so that first-use costs stay out of the figure,
# e.g. a Redis store's first connection, made lazily, which under valgrind's slowdown can
# outlast the store's timeout when 20 warm-up streams ask at once),
# TOGGLE (the function counted inside; empty: all), CALLGRIND_FLAGS (more callgrind
# options, e.g. `--cache-sim=yes` for simulated cache misses:
# `callgrind_annotate --show=Ir,I1mr,D1mr`).
# Needs valgrind (`apt-get install -y valgrind`). Not run by CI.
#
# Valgrind hides the CPU's SHA extensions, so SHA-256 (the digests) runs sha2's portable code
# and counts several times what it costs on hardware with SHA-NI. Where the instructions go:
#   callgrind_annotate --inclusive=yes "$OUT_DIR/callgrind.out" | less
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

STACK=${STACK:-full}
LOAD=${LOAD:-short}
GATEWAY=${GATEWAY:-$BIN/gateway}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-}
LOADGEN_FLAGS=${LOADGEN_FLAGS:-}
# Count inside the tasks tokio's workers run (a function fat LTO keeps); empty: the whole
# process, start-up included.
TOGGLE=${TOGGLE-'tokio::runtime::scheduler::multi_thread::worker::Context::run_task'}
WARM=60
case $LOAD in
  short) MOCK_FLAGS=(--tokens 2); CLIENTS=${CLIENTS:-50}; REPEAT=${REPEAT:-40} ;;
  long) MOCK_FLAGS=(--tokens 16 --delay-ms 5); CLIENTS=${CLIENTS:-200}; REPEAT=${REPEAT:-5} ;;
  *) echo "LOAD is short or long" >&2; exit 2 ;;
esac
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/instructions-$STACK-$LOAD-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

command -v valgrind > /dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 1; }
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit

start_mock "$OUT_DIR/mock.log" "${MOCK_FLAGS[@]}"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
# shellcheck disable=SC2086
valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.out" ${CALLGRIND_FLAGS:-} \
  ${TOGGLE:+--toggle-collect="$TOGGLE"} \
  "$GATEWAY" --listen "127.0.0.1:$PORT" --upstream "$MOCK_URL" --stack "$STACK" $GATEWAY_FLAGS \
  > "$OUT_DIR/gateway.log" 2>&1 &
GATEWAY_PID=$!
STARTED_PIDS+=("$GATEWAY_PID")
for _ in $(seq 1 300); do
  curl -sf -o /dev/null "$URL/healthz" && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$OUT_DIR/gateway.log" >&2; exit 1; }
  sleep 0.2
done

# LOADGEN_FLAGS is split like GATEWAY_FLAGS, and may quote a value with spaces.
eval "LOADGEN_ARGS=($LOADGEN_FLAGS)"
if [ "${PRIME:-0}" -gt 0 ]; then
  # Not counted: the counts are zeroed after it (its outcome is shown, refusals included).
  "$BIN/loadgen" --url "$URL" --streams 1 --repeat "$PRIME" --quiet "${LOADGEN_ARGS[@]}" 2>&1 |
    sed -n 's/^success/prime: success/p' >&2 || true
  callgrind_control --zero "$GATEWAY_PID" > /dev/null
fi
"$BIN/loadgen" --url "$URL" --streams 20 --repeat $((WARM / 20)) --quiet "${LOADGEN_ARGS[@]}" > /dev/null
"$BIN/loadgen" --url "$URL" --streams "$CLIENTS" --repeat "$REPEAT" --timeout 600 \
  --output "$OUT_DIR/loadgen.json" --quiet "${LOADGEN_ARGS[@]}" > "$OUT_DIR/loadgen.txt" 2>&1
# SIGINT: the gateway shuts down and callgrind writes its counts.
kill -INT "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
STREAMS=$((CLIENTS * REPEAT + WARM))
TOTAL=$(callgrind_annotate "$OUT_DIR/callgrind.out" 2> /dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
grep -E '^success' "$OUT_DIR/loadgen.txt" >&2
# A TOGGLE function inlined away in this build counts nothing: say so rather than print 0.
[ "${TOTAL:-0}" -gt 0 ] || { echo "nothing was counted inside '$TOGGLE' (inlined in this build?); try TOGGLE= (the whole process)" >&2; exit 1; }
echo "$STACK $LOAD: $TOTAL instructions over $STREAMS streams = $((TOTAL / STREAMS)) per stream ($OUT_DIR)"
