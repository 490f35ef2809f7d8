#!/usr/bin/env bash
# Times our collectives (`moshi-ttt collectives`: c10d ProcessGroupGloo driven from C++) and Python's
# torch.distributed on Gloo (bench_collectives_reference.py under torchrun) on the same cases, one after
# the other, and prints their algbw side by side with the ratio ours/python.
#   scripts/reference/compare_collectives.sh [--nproc N] [--sizes 4KiB,1MiB,25MiB,256MiB]
#       [--dtypes float32,bfloat16] [--ops all_reduce,reduce_scatter,all_gather,broadcast] [--iters K] [--out DIR]
# Writes DIR/ours.jsonl, DIR/python.jsonl, both runs' logs and DIR/summary.json (default DIR:
# build/reference/collectives, relative to the checkout). Exits 1 when our run reports wrong elements (the
# table is printed first), 3 when only the Python run does.
# Environment:
#   OMP_NUM_THREADS            threads per rank for both sides (default: cores / N, at least 1; what
#                              `moshi-ttt --nproc` picks by itself, while torchrun would pick 1)
#   MOSHI_TTT_BIN              our binary (default build/moshi-ttt)
#   MOSHI_TTT_CACHE            per-user cache (default ~/.cache/moshi-ttt)
#   MOSHI_TTT_TORCH_VERSION    torch venv to use (default 2.15.0; scripts/setup.sh builds it)
set -euo pipefail
cd "$(dirname "$0")/../.."

nproc=2 sizes=4KiB,1MiB,25MiB,256MiB dtypes=float32,bfloat16 ops=all_reduce,reduce_scatter,all_gather,broadcast
iters=5 out=build/reference/collectives
usage() { sed -n '5,6p' "$0" | sed 's/^# *//' >&2; exit "$1"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --dtypes) dtypes=$2; shift 2 ;;
    --ops) ops=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "compare_collectives: unknown argument '$1'" >&2; usage 2 ;;
  esac
done

CACHE=${MOSHI_TTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moshi-ttt}
TORCH_VERSION=${MOSHI_TTT_TORCH_VERSION:-2.15.0}
PY="$CACHE/torch-$TORCH_VERSION/venv/bin/python"
BIN=${MOSHI_TTT_BIN:-build/moshi-ttt}
[ -x "$PY" ] || { echo "compare_collectives: no torch venv at $(dirname "$(dirname "$PY")"): run scripts/setup.sh first" >&2; exit 1; }
[ -x "$BIN" ] || { echo "compare_collectives: no $BIN: build moshi-ttt first" >&2; exit 1; }

# The same thread count on both sides: `moshi-ttt --nproc` keeps an OMP_NUM_THREADS it is given, and so
# does torchrun.
cores=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / nproc > 0 ? cores / nproc : 1 ))}
mkdir -p "$out"
rm -f "$out/ours.jsonl" "$out/python.jsonl"
args=(--sizes "$sizes" --dtypes "$dtypes" --ops "$ops" --iters "$iters")
load_before=$(cut -d' ' -f1 /proc/loadavg)

echo "== moshi-ttt collectives: $nproc ranks, OMP_NUM_THREADS=$OMP_NUM_THREADS (load $load_before)"
ours_rc=0
"$BIN" collectives --nproc "$nproc" "${args[@]}" --json "$out/ours.jsonl" >"$out/ours.log" 2>&1 || ours_rc=$?
load_mid=$(cut -d' ' -f1 /proc/loadavg)
if [ ! -s "$out/ours.jsonl" ]; then
  cat "$out/ours.log" >&2
  echo "compare_collectives: our run wrote no results (exit code $ours_rc)" >&2
  exit 1
fi

# `python -m torch.distributed.run` is torchrun: the venv's bin/torchrun carries the shebang of the
# folder scripts/setup.sh built the venv in (venv.tmp) and does not start.
echo "== torch.distributed (gloo): $nproc ranks, OMP_NUM_THREADS=$OMP_NUM_THREADS (load $load_mid)"
py_rc=0
"$PY" -m torch.distributed.run --nproc-per-node "$nproc" --standalone \
  scripts/reference/bench_collectives_reference.py "${args[@]}" --json "$out/python.jsonl" \
  >"$out/python.log" 2>&1 || py_rc=$?
load_after=$(cut -d' ' -f1 /proc/loadavg)
if [ ! -s "$out/python.jsonl" ]; then
  tail -30 "$out/python.log" >&2
  echo "compare_collectives: the Python run wrote no results (exit code $py_rc)" >&2
  exit 1
fi

"$PY" - "$out" "$nproc" "$sizes" "$dtypes" "$ops" "$iters" "$OMP_NUM_THREADS" "$load_before" "$load_mid" \
  "$load_after" <<'PYEOF'
import json, math, sys
out, nproc, sizes, dtypes, ops, iters, omp, l0, l1, l2 = sys.argv[1:]
import torch

def read(p):
    with open(p) as f:
        return [json.loads(x) for x in f if x.strip()]

def human(b):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b / scale:.4g} {unit}"
    return f"{b} B"

def gmean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None

ours, ref = read(f"{out}/ours.jsonl"), read(f"{out}/python.jsonl")
key = lambda x: (x["collective"], x["dtype"], x["bytes"])
refs = {key(x): x for x in ref}
rows, ratios = [], {}
print(f"{'collective':<15} {'dtype':<9} {'size':>10} {'ours GB/s':>10} {'python GB/s':>12} {'ours/python':>12}")
for o in ours:
    p = refs.get(key(o))
    row = {"collective": o["collective"], "dtype": o["dtype"], "bytes": o["bytes"], "ours_algbw_gbs": o["algbw_gbs"],
           "ours_seconds": o["seconds"], "ours_wrong": o["wrong"]}
    if p is None or p.get("unsupported"):
        row["python"] = "missing" if p is None else "unsupported"
        pg, ratio = row["python"], None
    else:
        row.update(python_algbw_gbs=p["algbw_gbs"], python_seconds=p["seconds"], python_wrong=p["wrong"])
        ratio = o["algbw_gbs"] / p["algbw_gbs"]
        row["ratio"] = ratio
        ratios.setdefault(o["collective"], []).append(ratio)
        pg = f"{p['algbw_gbs']:.3f}"
    rows.append(row)
    flag = f"  {o['wrong']} WRONG" if o["wrong"] else ""
    rs = f"{ratio:.2f}x" if ratio is not None else "-"
    print(f"{o['collective']:<15} {o['dtype']:<9} {human(o['bytes']):>10} {o['algbw_gbs']:10.3f} {pg:>12} {rs:>12}{flag}")
per = {c: gmean(v) for c, v in ratios.items()}
allr = [r for v in ratios.values() for r in v]
overall = gmean(allr)
print("geometric mean ours/python: " + ", ".join(f"{c} {g:.2f}x" for c, g in per.items())
      + (f"; overall {overall:.2f}x ({len(allr)} cases)" if overall else ""))
print(f"(algbw = whole tensor bytes / mean time per run of the slowest rank; {nproc} ranks, {iters} timed runs, "
      f"OMP_NUM_THREADS={omp}, load {l0} -> {l1} -> {l2})")
ours_wrong = sum(o["wrong"] for o in ours)
py_wrong = sum(p.get("wrong", 0) for p in ref)
summary = {"nproc": int(nproc), "sizes": sizes, "dtypes": dtypes, "ops": ops, "iters": int(iters),
           "omp_num_threads": int(omp), "torch": torch.__version__,
           "load": {"before": float(l0), "between": float(l1), "after": float(l2)},
           "cases": rows, "geomean_ratio_per_collective": per, "geomean_ratio_overall": overall,
           "ours_wrong": ours_wrong, "python_wrong": py_wrong}
with open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
print(f"summary: {out}/summary.json")
PYEOF

if grep -q '"wrong":[1-9]' "$out/ours.jsonl"; then
  echo "compare_collectives: our collectives returned wrong elements (see $out/ours.log)" >&2
  exit 1
fi
if grep -q '"wrong": [1-9]' "$out/python.jsonl"; then
  echo "compare_collectives: torch.distributed returned wrong elements (see $out/python.log)" >&2
  exit 3
fi
