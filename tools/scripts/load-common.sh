# Shared by scale.sh, soak.sh, variance.sh, compare.sh and scale-procs.sh (source it, do not run it): building the
# release binaries (gateway, mock_upstream, loadgen), the fd limit, starting and always stopping the mock upstream and the
# gateway on free loopback ports, and reading a process's RSS and CPU time from /proc and the
# gateway's gauges and counters from /metrics.

# The workspace root (this file is in tools/scripts/).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The build profile of the measured binaries: `release-lto` (the workspace's Cargo.toml, fat
# LTO) unless PROFILE says another (`release` for a quicker build).
PROFILE=${PROFILE:-release-lto}
# Where `cargo build --profile $PROFILE -p PACKAGE` puts the binaries.
BIN=$TARGET_DIR/$PROFILE
CLK_TCK=$(getconf CLK_TCK)

# Every process started here; killed on exit, whatever happens.
STARTED_PIDS=()

stop_started() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}
trap stop_started EXIT
trap 'exit 130' INT TERM

# Stop one process started here.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# The gateway (examples/gateway), the mock upstream (examples/mock-upstream) and loadgen
# (tools), each its own workspace package: $BIN/gateway, $BIN/mock_upstream, $BIN/loadgen.
# GATEWAY_FEATURES=tuned builds the gateway with its benchmark-only `tuned` feature, as the
# figures of BENCHMARKS.md's "issue 15, fourth round" were measured (the default is the
# plain recipe: about 4% more instructions per short stream).
build_binaries() {
  echo "building the binaries gateway, mock_upstream, loadgen, sse-server (profile $PROFILE, target dir $TARGET_DIR)" >&2
  local features=()
  [ -n "${GATEWAY_FEATURES:-}" ] && features=(--features "example-gateway/$GATEWAY_FEATURES")
  (cd "$ROOT" && cargo build --profile "$PROFILE" --locked --quiet --bins "${features[@]}" \
    -p example-gateway -p example-mock-upstream -p tower-sse-tools)
}

# Raise the soft fd limit as far as allowed: the kernel's maximum when this shell may raise
# the hard limit (root with CAP_SYS_RESOURCE), else the hard limit.
raise_fd_limit() {
  local nr_open
  nr_open=$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576)
  ulimit -Hn "$nr_open" 2>/dev/null || true
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  echo "fd limit: $(ulimit -n) (hard $(ulimit -Hn))" >&2
}

# Print the load this machine is under, and wait (up to WAIT_QUIET_SECS, default 300) while
# another process uses more than half a core, so a run does not measure someone else's job.
wait_until_quiet() {
  local limit=${WAIT_QUIET_SECS:-300} waited=0 busy
  while :; do
    busy=$(top -bn1 | awk 'NR > 7 && $9 + 0 > 50 { print $12 " (" $9 "%)" }' | head -n 3 | tr '\n' ' ')
    [ -z "$busy" ] && return 0
    if [ "$waited" -ge "$limit" ]; then
      echo "warning: still busy after ${limit}s ($busy); measuring anyway" >&2
      return 0
    fi
    echo "waiting for a quiet machine: $busy" >&2
    sleep 10
    waited=$((waited + 10))
  done
}

# start_logged LOG CMD...: start CMD in the background with its output in LOG, remember its
# pid in STARTED_PID, and wait (10 s at most) for its "listening on http://ADDR" line; the
# address ends up in STARTED_URL.
start_logged() {
  local log=$1
  shift
  "$@" > "$log" 2>&1 &
  STARTED_PID=$!
  STARTED_PIDS+=("$STARTED_PID")
  STARTED_URL=
  local _
  for _ in $(seq 1 100); do
    STARTED_URL=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$STARTED_URL" ] && return 0
    kill -0 "$STARTED_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$1 did not start; its log:" >&2
  cat "$log" >&2
  exit 1
}

# start_mock LOG [FLAGS...]: the mock upstream on a free port; sets MOCK_PID and MOCK_URL.
start_mock() {
  local log=$1
  shift
  start_logged "$log" "$BIN/mock_upstream" --listen 127.0.0.1:0 "$@"
  MOCK_PID=$STARTED_PID
  MOCK_URL=$STARTED_URL
}

# start_gateway LOG UPSTREAM [FLAGS...]: the gateway on a free port; sets GATEWAY_PID and
# GATEWAY_URL.
start_gateway() {
  local log=$1 upstream=$2
  shift 2
  start_logged "$log" "$BIN/gateway" --listen 127.0.0.1:0 --upstream "$upstream" "$@"
  GATEWAY_PID=$STARTED_PID
  GATEWAY_URL=$STARTED_URL
}

# Resident set size of PID, in KiB.
rss_kb() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# User + system CPU time of PID, in seconds (fields 14 and 15 of /proc/PID/stat, counted
# after the command name, which may hold spaces).
cpu_seconds() {
  sed 's/.*) //' "/proc/$1/stat" | awk -v tck="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / tck }'
}

# metric URL NAME: the sum of a metric over all its label sets in the gateway's /metrics
# (0 when absent; -1 when /metrics cannot be read, so that no check passes by accident).
metric() {
  local text
  text=$(curl -sf --max-time 5 "$1/metrics") || { printf '%s' -1; return 0; }
  printf '%s\n' "$text" | awk -v name="$2" '
    $1 == name || index($1, name "{") == 1 { sum += $NF }
    END { printf "%d", sum }'
}

# wait_for_zero URL NAME SECS: wait until the metric is 0, SECS at most; prints its last value.
wait_for_zero() {
  local value _
  for _ in $(seq 1 $(($3 * 5))); do
    value=$(metric "$1" "$2")
    [ "$value" = 0 ] && break
    sleep 0.2
  done
  printf '%s' "$value"
}

# source_ips N: a --source-ips list giving each source address at most 20000 connections
# (the ephemeral port range holds about 28k); empty when one address is enough.
source_ips() {
  local n=$1 per=20000 count i list=
  count=$(((n + per - 1) / per))
  [ "$count" -le 1 ] && return 0
  for i in $(seq 2 $((count + 1))); do
    list+="${list:+,}127.0.0.$i"
  done
  printf '%s' "$list"
}
