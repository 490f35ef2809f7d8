#!/usr/bin/env bash
# Times moshi-ttt's TTT layers (bench/bench_ttt) and ttt-lm-pytorch's (bench_ttt_reference.py) back to back
# at C=768, 12 heads, L=2048, mini-batch 16, fp32, 2 threads, and prints the ratios (best of 5 each) and
# the ceiling: the useful FLOPs at the machine's measured sgemm rate, i.e. the best ratio any fp32
# implementation could reach here.
#   scripts/reference/compare_ttt.sh PATH_TO_ttt-lm-pytorch [ROUNDS]
# PATH may be a work tree or a bare git directory (as `fetch` brings it).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 PATH_TO_ttt-lm-pytorch [ROUNDS]" >&2; exit 2; }
repo=$1
rounds=${2:-1}
cd "$(dirname "$0")/../.."
PY=$(scripts/reference/setup_reference_env.sh 2>/dev/null | tail -1)
mkdir -p build/reference
for r in $(seq "$rounds"); do
  echo "== round $r: moshi-ttt (load $(cut -d' ' -f1 /proc/loadavg))"
  build/bench/bench_ttt --benchmark_filter='Sgemm|/linear_|/mlp_' --benchmark_format=json \
    --benchmark_out=build/reference/ttt_ours_$r.json >/dev/null
  echo "== round $r: ttt-lm-pytorch (load $(cut -d' ' -f1 /proc/loadavg))"
  "$PY" scripts/reference/bench_ttt_reference.py "$repo" --threads 2 --reps 5 >build/reference/ttt_ref_$r.txt
  python3 - "$r" <<'PYEOF'
import json, re, sys
r = sys.argv[1]
# Aggregates of 5 repetitions: the fastest run has the min time and the max rate.
best, fastest_rate = {}, {}
for b in json.load(open(f"build/reference/ttt_ours_{r}.json"))["benchmarks"]:
    parts = b["run_name"].split("/")
    key = parts[1] if parts[0] == "BM_TTT" else parts[0]
    if b.get("aggregate_name") == "min":
        best[key] = b
    if b.get("aggregate_name") == "max":
        fastest_rate[key] = b["GFLOP/s"]
ref, ref_peak = {}, None
for line in open(f"build/reference/ttt_ref_{r}.txt"):
    m = re.match(r"reference ttt-(\w+) (fwd\+bwd|fwd):\s+\d+ tok/s\s+([\d.]+) ms", line)
    if m:
        ref[f"{m[1]}_{'fwdbwd' if m[2] == 'fwd+bwd' else 'fwd'}"] = float(m[3])
    m = re.match(r"sgemm 2048\^2: ([\d.]+) GFLOP/s", line)
    if m:
        ref_peak = float(m[1])
# The machine's rate: the better of the two processes' sgemm measurements (it varies between runs).
peak = max(fastest_rate["BM_Sgemm2048"], ref_peak or 0)
print(f"sgemm 2048: ours {fastest_rate['BM_Sgemm2048']:.0f} GFLOP/s, reference process {ref_peak:.0f} GFLOP/s")
for k in ("linear_fwd", "linear_fwdbwd", "mlp_fwd", "mlp_fwdbwd"):
    ms, gf = best[k]["real_time"], fastest_rate[k]
    floor_ms = ms * gf / peak  # the useful FLOPs at the sgemm rate
    print(f"{k:14s} ours {ms:7.1f} ms ({gf:5.1f} GFLOP/s), reference {ref[k]:7.1f} ms -> {ref[k] / ms:.2f}x; "
          f"ceiling at sgemm peak {floor_ms:6.1f} ms = {ref[k] / floor_ms:.2f}x")
PYEOF
done
