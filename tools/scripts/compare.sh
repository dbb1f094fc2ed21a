#!/usr/bin/env bash
# compare.sh — the example gateway against the proxies users would pick, the same load, one run.
#
# Builds the release binaries, starts the mock upstream (TOKENS content tokens DELAY_MS apart:
# 16 × 100 ms by default, 18 content-bearing events and [DONE] per stream), and loads each of
# these in turn with loadgen (N = 2000 clients started evenly over RAMP = 1 s, one stream each):
#
#   bypass         loadgen → mock (no proxy: the floor of TTFB and TTFT)
#   nginx          loadgen → nginx → mock: one worker per core, proxy_buffering off, upstream
#                  keepalive, HTTP/1.1 to the upstream, access log on (nginx's default).
#                  Installed with `apt-get install -y nginx` when missing (NGINX=0 skips it)
#   bare-multi     loadgen → gateway --stack bare --runtime multi → mock: the same server, router,
#   bare-per-core  connection limits and pooled upstream client as the gateway, no tower-sse
#                  layer: the floor of a Rust gateway on hyper
#   gateway-multi  loadgen → gateway (full stack) --runtime multi → mock
#   gateway-per-core  the same with --runtime per-core
#   other-multi, other-per-core  the gateway binary OTHER_GATEWAY (full stack), e.g. a build of
#                  another commit, for a before/after in the same run (not in the default RUNS)
#   NAME=PATH[,FLAG...]  any gateway binary at PATH, with these flags (commas for spaces): e.g.
#                  RUNS="nginx base=/tmp/gateway-old,--runtime,multi gateway-multi"
#   litellm        loadgen → LiteLLM's proxy → mock, when LITELLM=/path/to/litellm is given
#                  (a `litellm` from `pip install 'litellm[proxy]'`, e.g. in a venv); one model
#                  routed to the mock as an OpenAI upstream, no master key, no database;
#                  LITELLM_WORKERS (1)
#
# ROUNDS (1) repeats the whole sequence, so that a noisy machine shows as a spread. For each
# proxy it samples the proxy's processes every SAMPLE_SECS (0.1): RSS (VmRSS, summed over the
# processes), CPU (utime + stime, summed) and open file descriptors; each open stream holds two
# (client and upstream socket), so open streams = (fds − fds before the load) / 2, the same
# count for every proxy. "before" is after a warm-up of 20 short streams.
#
#   cpu_s              CPU seconds of the proxy from the start of the load to its end
#   open_at_peak       streams open in the proxy at the sample with the most descriptors
#   rss_per_stream_kb  (RSS at that sample − RSS before) / open_at_peak
#   ttfb/ttft p50,p99  loadgen's request-to-head and request-to-first-content times (ms)
#   success            ok streams / all streams
#   tcp_per_stream     TCP segments sent, pure ACKs received and delayed ACKs per stream,
#                      from the machine's counters (loadgen's and the mock's included: the
#                      same load through two proxies differs by what the proxy sends)
#
# The load average is printed (and stored) before every run: a figure from a busy machine is
# worth repeating. Output: OUT_DIR (target/load/compare-N-TIME): one JSON per run,
# summary.json, summary.md, and each gateway run's /metrics after its load (NAME.metrics.txt:
# e.g. gateway_otlp_spans_dropped_total with --otlp-endpoint). Not run by CI.
#
# Environment: N (2000), TOKENS (16), DELAY_MS (100), RAMP (1), ROUNDS (1), SAMPLE_SECS (0.1),
# RUNS (all of: bypass nginx bare-multi bare-per-core gateway-multi gateway-per-core litellm),
# GATEWAY_FLAGS (extra flags for every gateway run), OTHER_GATEWAY, OTHER_FLAGS, NGINX (1), LITELLM, LITELLM_WORKERS,
# OUT_DIR, CARGO_TARGET_DIR, WAIT_QUIET_SECS (300; 0 = do not wait), SKIP_BUILD=1,
# PERF_EVENTS (e.g. 'syscalls:sys_enter_*,context-switches': counted with `perf stat` on the
# proxy's processes over the load, into NAME.perf.csv; needs perf),
# PERF_RECORD (e.g. '-F 999 -g': `perf record` on the proxy's processes over the load, into
# NAME.perf.data; read with `perf report -i NAME.perf.data --sort sym`; sampling, with -g
# above all, adds to the run's cpu_s).
set -euo pipefail
source "$(dirname "$0")/load-common.sh"

N=${N:-2000}
TOKENS=${TOKENS:-16}
DELAY_MS=${DELAY_MS:-100}
RAMP=${RAMP:-1}
ROUNDS=${ROUNDS:-1}
SAMPLE_SECS=${SAMPLE_SECS:-0.1}
RUNS=${RUNS:-bypass nginx bare-multi bare-per-core gateway-multi gateway-per-core litellm}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-}
LITELLM_WORKERS=${LITELLM_WORKERS:-1}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/load/compare-$N-$(date +%Y%m%d-%H%M%S)}
STREAM_SECS=$(awk -v t="$TOKENS" -v d="$DELAY_MS" 'BEGIN { print t * d / 1000 }')
TIMEOUT=$(awk -v s="$STREAM_SECS" 'BEGIN { print int(s + 60) }')
SOURCE_IPS=$(source_ips "$N")

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
[ "${SKIP_BUILD:-}" = 1 ] || build_binaries
raise_fd_limit
wait_until_quiet

# The mock answers with TOKENS × DELAY_MS by default, so that a proxy that drops the request
# body's "mock" controls (LiteLLM) still gets the same stream.
start_mock "$OUT_DIR/mock.log" --tokens "$TOKENS" --delay-ms "$DELAY_MS"
MOCK_PORT=${MOCK_URL##*:}
echo "mock upstream on $MOCK_URL; $N streams of ${STREAM_SECS}s, ramp ${RAMP}s; results in $OUT_DIR" >&2

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL: until URL answers anything at all (10 s at most).
wait_http() {
  local _
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 2 "$1" && return 0
    sleep 0.1
  done
  echo "nothing answers on $1" >&2
  return 1
}

# The processes of a proxy: PID and its descendants (nginx's workers, LiteLLM's workers).
proc_tree() {
  local pid=$1 child
  echo "$pid"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    proc_tree "$child"
  done
}

# sample PIDS...: "cpu_s rss_kb fds" summed over the processes.
sample() {
  local pid cpu=0 rss=0 fds=0 c r f
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    c=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
    r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    f=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    cpu=$((cpu + c))
    rss=$((rss + ${r:-0}))
    fds=$((fds + f))
  done
  echo "$(awk -v c="$cpu" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", c / t }') $rss $fds"
}

# tcp_counters: "OutSegs AcksReceived DelayedAcks" of the whole machine (loopback included),
# from /proc/net, each column found by its name (0 when the kernel has no such counter): the
# same load through two proxies differs only by what the proxy sends. Pure ACKs received
# are the kernel's slow-path and fast-path counts together.
tcp_counters() {
  local segs acks
  segs=$(awk '/^Tcp:/ { if (!seen) { for (i = 2; i <= NF; i++) col[$i] = i; seen = 1 } else print (col["OutSegs"] ? $col["OutSegs"] : 0) }' /proc/net/snmp)
  acks=$(awk '/^TcpExt:/ { if (!seen) { for (i = 2; i <= NF; i++) col[$i] = i; seen = 1 } else {
      pure = (col["TCPPureAcks"] ? $col["TCPPureAcks"] : 0) + (col["TCPHPAcks"] ? $col["TCPHPAcks"] : 0)
      print pure, (col["DelayedACKs"] ? $col["DelayedACKs"] : 0) } }' /proc/net/netstat)
  echo "${segs:-0} ${acks:-0 0}"
}

# run_load URL NAME: loadgen, in the foreground.
run_load() {
  "$BIN/loadgen" --url "$1" --streams "$N" --ramp "$RAMP" --timeout "$TIMEOUT" \
    ${SOURCE_IPS:+--source-ips "$SOURCE_IPS"} --quiet --output "$OUT_DIR/$2.loadgen.json" \
    > "$OUT_DIR/$2.loadgen.txt" 2>&1 &
  LOADGEN_PID=$!
  STARTED_PIDS+=("$LOADGEN_PID")
}

# measure NAME URL ROOT_PID: warm up, load, sample the process tree of ROOT_PID; NAME.json.
measure() {
  local name=$1 url=$2 root=$3 load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  "$BIN/loadgen" --url "$url" --streams 20 --tokens 2 --delay-ms 0 --quiet > /dev/null 2>&1 || true
  sleep 0.5
  local pids
  pids=$(proc_tree "$root" | tr '\n' ' ')
  local before peak cur cpu_before rss_before fds_before peak_fds peak_rss
  before=$(sample $pids)
  read -r cpu_before rss_before fds_before <<< "$before"
  peak_fds=$fds_before
  peak_rss=$rss_before
  local perf_pid=
  if [ -n "${PERF_EVENTS:-}" ]; then
    perf stat -x, -e "$PERF_EVENTS" -p "$(echo $pids | tr ' ' ',')" -o "$OUT_DIR/$name.perf.csv" &
    perf_pid=$!
  fi
  local segs_before pure_before delayed_before
  read -r segs_before pure_before delayed_before <<< "$(tcp_counters)"
  local record_pid=
  if [ -n "${PERF_RECORD:-}" ]; then
    # shellcheck disable=SC2086
    perf record $PERF_RECORD -p "$(echo $pids | tr ' ' ',')" -o "$OUT_DIR/$name.perf.data" \
      2> "$OUT_DIR/$name.perf-record.log" &
    record_pid=$!
  fi
  run_load "$url" "$name"
  while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    read -r _ cur_rss cur_fds <<< "$(sample $pids)"
    if [ "$cur_fds" -gt "$peak_fds" ] || { [ "$cur_fds" -eq "$peak_fds" ] && [ "$cur_rss" -gt "$peak_rss" ]; }; then
      peak_fds=$cur_fds
      peak_rss=$cur_rss
    fi
    sleep "$SAMPLE_SECS"
  done
  wait "$LOADGEN_PID" || echo "loadgen failed; see $OUT_DIR/$name.loadgen.txt" >&2
  sleep 0.3
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  if [ -n "$record_pid" ]; then
    kill -INT "$record_pid" 2>/dev/null || true
    wait "$record_pid" 2>/dev/null || true
  fi
  local cpu_after rss_after segs_after pure_after delayed_after
  read -r cpu_after rss_after _ <<< "$(sample $pids)"
  read -r segs_after pure_after delayed_after <<< "$(tcp_counters)"
  jq -n --arg name "$name" --arg load "$load" --argjson n "$N" --argjson round "$ROUND" \
    --argjson rss_before "$rss_before" --argjson rss_peak "$peak_rss" --argjson rss_after "$rss_after" \
    --argjson fds_before "$fds_before" --argjson fds_peak "$peak_fds" \
    --argjson cpu_before "$cpu_before" --argjson cpu_after "$cpu_after" \
    --argjson procs "$(echo $pids | wc -w)" \
    --argjson segs $((segs_after - segs_before)) --argjson pure $((pure_after - pure_before)) \
    --argjson delayed $((delayed_after - delayed_before)) \
    --slurpfile l "$OUT_DIR/$name.loadgen.json" '
    ($fds_peak - $fds_before) / 2 | floor as $open | {
      run: $name, round: $round, streams: $n, loadavg: $load, processes: $procs,
      open_at_peak: $open, rss_before_kb: $rss_before, rss_peak_kb: $rss_peak, rss_after_kb: $rss_after,
      rss_per_stream_kb: (if $open > 0 then (($rss_peak - $rss_before) / $open * 100 | round) / 100 else null end),
      cpu_s: ((($cpu_after - $cpu_before) * 100 | round) / 100),
      tcp_per_stream: {segments: ($segs / $n * 10 | round / 10), acks_received: ($pure / $n * 10 | round / 10),
        delayed_acks: ($delayed / $n * 10 | round / 10)},
      loadgen: ($l[0] | {total, outcomes, success_rate, peak_open, ttfb_ms, ttft_ms, duration_ms})
    }' > "$OUT_DIR/$name.json"
  echo "$name (load $load): $(jq -c '{open_at_peak, rss_per_stream_kb, cpu_s, tcp_per_stream, ttft_p99: .loadgen.ttft_ms.p99, success: .loadgen.success_rate}' "$OUT_DIR/$name.json")" >&2
}

measure_bypass() {
  local name=$1 load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  run_load "$MOCK_URL" "$name"
  wait "$LOADGEN_PID" || echo "loadgen failed; see $OUT_DIR/$name.loadgen.txt" >&2
  jq --arg name "$name" --arg load "$load" --argjson n "$N" --argjson round "$ROUND" \
    '{run: $name, round: $round, streams: $n, loadavg: $load, loadgen: {total, outcomes, success_rate, peak_open, ttfb_ms, ttft_ms, duration_ms}}' \
    "$OUT_DIR/$name.loadgen.json" > "$OUT_DIR/$name.json"
  echo "$name (load $load): $(jq -c '{ttft_p99: .loadgen.ttft_ms.p99, success: .loadgen.success_rate}' "$OUT_DIR/$name.json")" >&2
}

# save_metrics NAME URL: the gateway's /metrics after the run (after its CPU was sampled) in
# NAME.metrics.txt, and the OTLP exporter's and budgets' counters on stderr when it has any.
save_metrics() {
  curl -sf --max-time 5 "$2/metrics" > "$OUT_DIR/$1.metrics.txt" || return 0
  grep -E '^(gateway_otlp_|tower_sse_budget_(admitted|rejections))' "$OUT_DIR/$1.metrics.txt" |
    sed "s/^/$1: /" >&2 || true
}

measure_gateway() {
  local name=$1
  shift
  # shellcheck disable=SC2086
  start_gateway "$OUT_DIR/$name.gateway.log" "$MOCK_URL" --max-streams $((N * 2)) "$@" $GATEWAY_FLAGS
  measure "$name" "$GATEWAY_URL" "$GATEWAY_PID"
  save_metrics "$name" "$GATEWAY_URL"
  stop_pid "$GATEWAY_PID"
}

# measure_other NAME FLAGS...: the same with the gateway binary OTHER_GATEWAY.
measure_other() {
  local name=$1
  shift
  [ -x "${OTHER_GATEWAY:-}" ] || { echo "$name: OTHER_GATEWAY is not an executable; skipped" >&2; return 0; }
  # shellcheck disable=SC2086
  start_logged "$OUT_DIR/$name.gateway.log" "$OTHER_GATEWAY" --listen 127.0.0.1:0 --upstream "$MOCK_URL" \
    --max-streams $((N * 2)) "$@" ${OTHER_FLAGS:-}
  measure "$name" "$STARTED_URL" "$STARTED_PID"
  save_metrics "$name" "$STARTED_URL"
  stop_pid "$STARTED_PID"
}

ensure_nginx() {
  command -v nginx > /dev/null && return 0
  echo "installing nginx from the system packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y nginx > "$OUT_DIR/nginx-install.log" 2>&1 ||
    { apt-get update > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >> "$OUT_DIR/nginx-install.log" 2>&1; }
}

measure_nginx() {
  local name=$1 dir=$OUT_DIR/nginx port
  ensure_nginx || { echo "nginx: cannot be installed; skipped (see $OUT_DIR/nginx-install.log)" >&2; return 0; }
  port=$(free_port)
  mkdir -p "$dir/logs"
  cat > "$dir/nginx.conf" <<EOF
# Generated by tools/scripts/compare.sh: nginx as a plain streaming pass-through.
daemon off;
master_process on;
user root;
worker_processes auto;
worker_rlimit_nofile $((4 * N + 1024));
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections $((4 * N + 1024));
}
http {
    access_log $dir/logs/access.log;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive $((N + 64));
    }
    server {
        listen 127.0.0.1:$port reuseport;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" > "$dir/logs/stdout.log" 2>&1 &
  local pid=$!
  STARTED_PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/healthz" || { cat "$dir/logs/stdout.log" "$dir/logs/error.log" >&2; return 1; }
  sleep 0.3
  measure "$name" "http://127.0.0.1:$port" "$pid"
  stop_pid "$pid"
}

measure_litellm() {
  local name=$1 dir=$OUT_DIR/litellm port
  if [ -z "${LITELLM:-}" ] || ! [ -x "$LITELLM" ]; then
    echo "litellm: LITELLM is not set to an installed litellm binary; skipped" >&2
    return 0
  fi
  port=$(free_port)
  mkdir -p "$dir"
  cat > "$dir/config.yaml" <<EOF
model_list:
  - model_name: gpt-mock
    litellm_params:
      model: openai/gpt-mock
      api_base: $MOCK_URL/v1
      api_key: not-used
litellm_settings:
  drop_params: true
EOF
  # No master key: a local benchmark, nothing to protect (LiteLLM refuses to start without
  # one unless told so).
  LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
    "$LITELLM" --config "$dir/config.yaml" --host 127.0.0.1 --port "$port" --num_workers "$LITELLM_WORKERS" \
    > "$dir/litellm.log" 2>&1 &
  local pid=$!
  STARTED_PIDS+=("$pid")
  local _ up=
  for _ in $(seq 1 180); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/liveliness" && { up=1; break; }
    sleep 1
  done
  [ -n "$up" ] || { echo "litellm did not start; see $dir/litellm.log" >&2; return 0; }
  measure "$name" "http://127.0.0.1:$port" "$pid"
  local tree
  tree=$(proc_tree "$pid")
  # shellcheck disable=SC2086
  kill $tree 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

DONE_RUNS=()
for ROUND in $(seq 1 "$ROUNDS"); do
  for run in $RUNS; do
    name=$run
    [ "$ROUNDS" -gt 1 ] && name=$run.r$ROUND
    case $run in
      bypass) measure_bypass "$name" ;;
      nginx) [ "${NGINX:-1}" = 1 ] && measure_nginx "$name" ;;
      bare-multi) measure_gateway "$name" --stack bare --runtime multi ;;
      bare-per-core) measure_gateway "$name" --stack bare --runtime per-core ;;
      gateway-multi) measure_gateway "$name" --runtime multi ;;
      gateway-per-core) measure_gateway "$name" --runtime per-core ;;
      *=*)
        name=${run%%=*}
        [ "$ROUNDS" -gt 1 ] && name=$name.r$ROUND
        spec=${run#*=}
        # shellcheck disable=SC2086
        OTHER_GATEWAY=${spec%%,*} measure_other "$name" $(tr ',' ' ' <<< "${spec#"${spec%%,*}"}")
        ;;
      other-multi) measure_other "$name" --runtime multi ;;
      other-per-core) measure_other "$name" --runtime per-core ;;
      litellm) measure_litellm "$name" ;;
      *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    [ -f "$OUT_DIR/$name.json" ] && DONE_RUNS+=("$OUT_DIR/$name.json")
  done
done

jq -s '.' "${DONE_RUNS[@]}" > "$OUT_DIR/summary.json"
jq -r --arg tokens "$TOKENS" --arg delay "$DELAY_MS" --arg ramp "$RAMP" '
  def ms(x): if x == null then "–" else (x * 10 | round / 10 | tostring) end;
  def or_dash(x): if x == null then "–" else (x | tostring) end;
  "# compare: \(.[0].streams) streams, \($tokens) tokens × \($delay) ms, ramp \($ramp) s\n",
  "| run | load avg | open at peak | CPU s | RSS/stream (KiB) | RSS before → peak (MiB) | TTFB p50 / p99 (ms) | TTFT p50 / p99 (ms) | success |",
  "|---|---|---|---|---|---|---|---|---|",
  (.[] | "| \(.run) | \(.loadavg | split(" ") | .[0]) | \(or_dash(.open_at_peak // .loadgen.peak_open)) | \(or_dash(.cpu_s)) | \(or_dash(.rss_per_stream_kb)) | \(if .rss_before_kb then "\(ms(.rss_before_kb / 1024)) → \(ms(.rss_peak_kb / 1024))" else "–" end) | \(ms(.loadgen.ttfb_ms.p50)) / \(ms(.loadgen.ttfb_ms.p99)) | \(ms(.loadgen.ttft_ms.p50)) / \(ms(.loadgen.ttft_ms.p99)) | \(.loadgen.success_rate * 10000 | round / 100)% |")
  ' "$OUT_DIR/summary.json" | tee "$OUT_DIR/summary.md"
