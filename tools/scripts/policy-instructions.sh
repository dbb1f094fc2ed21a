#!/usr/bin/env bash
# policy-instructions.sh — per-event instructions of acting on a stream (issue 26), counted by
# callgrind on benches/policy.rs: the 202-event chat stream (one upstream frame per event)
# polled by hand, STREAMS copies. Two figures per variant: the difference between STREAMS and
# 2 x STREAMS runs divided by the extra events (start-up cancels out; each stream's own cost
# is shared out over its events), and the difference between streams whose 200 content
# events come once and twice, divided by the extra events (per content event alone).
#
#   tools/scripts/policy-instructions.sh [VARIANT...]
#   (default: none pass redact holdback4 regex-nohold regex regex-match; see benches/policy.rs)
#
# Needs valgrind. Builds the bench in the `bench` profile without LTO, 16 codegen units (a
# build that fits a shared machine; override with CARGO_PROFILE_BENCH_LTO /
# CARGO_PROFILE_BENCH_CODEGEN_UNITS). BIN=path counts that binary instead of building (say,
# the same bench built from an older commit). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
STREAMS=${STREAMS:-20}
EVENTS_PER_STREAM=202
export CARGO_PROFILE_BENCH_LTO=${CARGO_PROFILE_BENCH_LTO:-off}
export CARGO_PROFILE_BENCH_CODEGEN_UNITS=${CARGO_PROFILE_BENCH_CODEGEN_UNITS:-16}
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  bin=$(cargo bench --locked -p tower-sse --bench policy --no-run --message-format json 2> /dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
fi
echo "binary: $bin (bench profile, LTO $CARGO_PROFILE_BENCH_LTO, codegen units $CARGO_PROFILE_BENCH_CODEGEN_UNITS)"
count() {
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$@" > /dev/null 2>&1
  callgrind_annotate "$out" 2> /dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
  rm -f "$out"
}
for variant in "${@:-none pass redact holdback4 regex-nohold regex regex-match}"; do
  for v in $variant; do
    one=$(count "$v" "$STREAMS" 1)
    two=$(count "$v" $((2 * STREAMS)) 1)
    long=$(count "$v" "$STREAMS" 2)
    # Per event with each stream's own cost shared out over its 202 events; and per content
    # event alone (streams twice as long, same number of streams).
    echo "$v: $(( (two - one) / (STREAMS * EVENTS_PER_STREAM) )) instructions per event (per-stream share included)," \
      "$(( (long - one) / (STREAMS * 200) )) per content event"
  done
done
