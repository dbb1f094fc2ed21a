#!/usr/bin/env python3
"""callgrind_per_call.py OUT — instructions per stream of a criterion bench run under
callgrind with `--toggle-collect='body::common::drive::drain*'` (one call of drive::drain is
one whole stream through the body).

Prints the calls into drain by caller, with their inclusive instructions, and the cost per
call of the busiest caller: criterion's measuring loop. The few calls the bench makes
before it measures (its checks of every input) are left out of that figure; dividing the
run's total by all calls would mix them in, in a share that depends on how many iterations
criterion ran.

    valgrind --tool=callgrind --callgrind-out-file=out \\
      --toggle-collect='body::common::drive::drain*' \\
      <body bench binary> --bench --profile-time 3 'a_one_bytes_per_event/sse_body$'
    tools/scripts/callgrind_per_call.py out

An optional second argument names the function counted instead of `drive::drain` (a part of
its name), e.g. `drive::through` for the layer's call and the response head.
"""
import re, sys
from collections import defaultdict

callee = sys.argv[2] if len(sys.argv) > 2 else "drive::drain"

names = {}
arcs = defaultdict(lambda: [0, 0])  # caller -> [calls, inclusive Ir]
total = None
fn = cfn = None
pending = False
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
    if m:
        kind, ident, name = m.groups()
        if name:
            names[ident] = name
        if kind == "fn":
            fn = ident
        else:
            cfn = ident
        continue
    if line.startswith("calls="):
        calls = int(line.split("=")[1].split()[0])
        pending = calls
        continue
    if pending is not False:
        parts = line.split()
        ir = int(parts[1]) if len(parts) > 1 else 0
        # Calls from a function of the same name are closures or instances nested in it,
        # already counted inclusively in the outer call.
        if callee in names.get(cfn, "") and callee not in names.get(fn, ""):
            arcs[fn][0] += pending
            arcs[fn][1] += ir
        pending = False
        continue
    if line.startswith("totals:") or line.startswith("summary:"):
        total = int(line.split()[1])
best = None
for caller, (calls, ir) in sorted(arcs.items(), key=lambda kv: -kv[1][0]):
    print(f"{calls:>8} calls {ir:>14,} Ir  {ir / calls:>12,.0f} per call  from {names.get(caller, caller)[:90]}")
    best = best or (calls, ir)
calls = sum(c for c, _ in arcs.values())
print(f"collected {total:,} Ir over {calls} calls of {callee}: {total / calls:,.0f} per call")
print(f"busiest caller: {best[1] / best[0]:,.1f} Ir per stream")
