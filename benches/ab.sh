#!/bin/bash
# Two builds of the flood bench, side by side on the same (possibly loaded) machine: each round runs
# both, in alternating order, so drift in the machine's speed lands on both alike. Prints, per
# round, build, handler kind, events/s and the client's CPU µs per event; then, per handler kind,
# the medians over the rounds of each round's B ÷ A.
#
#   cargo bench --features testkit --bench flood --no-run      # at commit A; copy the executable it
#   ...                                                          # names to A, then the same at B
#   benches/ab.sh A B ROUNDS
set -euo pipefail
a=$1 b=$2 rounds=${3:-10}
export FLOOD_EVENTS=${FLOOD_EVENTS:-200000} FLOOD_SHARDS=${FLOOD_SHARDS:-1} \
  FLOOD_COMPRESSION=${FLOOD_COMPRESSION:-none} FLOOD_REPEATS=1 \
  FLOOD_HANDLERS=${FLOOD_HANDLERS:-each,batch,thread}
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for v in $order; do
    if [ "$v" = A ]; then exe=$a; else exe=$b; fi
    "$exe" 2>&1 | awk -v v="$v" -v r="$r" '$1 ~ /^[0-9]+$/ && NF >= 9 {print r, v, $3, $5, $9}' | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, v, kind, rate, cpu = line.split()
    runs[(r, kind)][v] = (float(rate), float(cpu))
for kind in sorted({k for _, k in runs}):
    pairs = [x for (_, k), x in runs.items() if k == kind and len(x) == 2]
    rate = statistics.median(x["B"][0] / x["A"][0] for x in pairs)
    cpu = statistics.median(x["B"][1] / x["A"][1] for x in pairs)
    print(f"{kind:>8}: {len(pairs)} rounds, median B/A events/s {rate:.3f}, CPU per event {cpu:.3f}")
PY
rm -f "$out"
