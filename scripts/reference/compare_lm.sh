#!/usr/bin/env bash
# Times moshi-ttt's small LM (bench/bench_lm) and Kyutai's Python LMModel/LMGen on the same config,
# back to back in one run, and prints the ratios. Usage: scripts/reference/compare_lm.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-1}
PY=$(scripts/reference/setup_reference_env.sh 2>/dev/null | tail -1)
mkdir -p build/reference
for r in $(seq "$rounds"); do
  echo "== round $r: moshi-ttt (load $(cut -d' ' -f1 /proc/loadavg))"
  build/bench/bench_lm --benchmark_filter='LM|Sgemm' --benchmark_format=json --benchmark_out=build/reference/ours_$r.json >/dev/null
  echo "== round $r: Kyutai moshi 0.2.13, torch.compile off (load $(cut -d' ' -f1 /proc/loadavg))"
  NO_TORCH_COMPILE=1 NO_CUDA_GRAPH=1 "$PY" scripts/reference/bench_lm_reference.py --compile off --runs 3 --warmup 1 \
    --steps 30 --warmup-steps 5 --out build/reference/ref_$r.json >/dev/null 2>&1
  python3 - "$r" <<'PYEOF'
import json, sys
r = sys.argv[1]
# The base model's rows (the other variants carry TTT layers the reference does not have).
ours = {b["name"].split("/")[0]: b for b in json.load(open(f"build/reference/ours_{r}.json"))["benchmarks"]
        if b.get("label", "").startswith("base")}
ref = json.loads(open(f"build/reference/ref_{r}.json").read().strip().splitlines()[-1])
peak = [b for b in json.load(open(f"build/reference/ours_{r}.json"))["benchmarks"] if b["name"].startswith("BM_Sgemm2048")]
ours_tok = ours["BM_LMForward"]["tok/s"]
ours_ms = ours["BM_LMStreamingStep"]["real_time"]
floor = ours["BM_LMStreamingStep"].get("floor_ms")
ref_tok = ref["forward"]["tokens_per_s"]
ref_ms = ref["streaming"]["median_ms"]
print(f"forward T=256: ours {ours_tok:.0f} tok/s, reference {ref_tok:.0f} tok/s -> {ours_tok / ref_tok:.2f}x")
if peak:
    # At the machine's sgemm rate the weights' multiply-adds alone allow at most this many tokens/s.
    gf, pk = ours["BM_LMForward"]["GFLOP/s"], peak[0]["GFLOP/s"]
    ceiling = ours_tok * pk / gf
    print(f"  ours at {gf:.0f} GFLOP/s of useful work, sgemm 2048 peak {pk:.0f} GFLOP/s: any fp32 forward here "
          f"<= {ceiling:.0f} tok/s = {ceiling / ref_tok:.2f}x the reference")
print(f"streaming step: ours {ours_ms:.1f} ms, reference {ref_ms:.1f} ms -> {ref_ms / ours_ms:.2f}x faster; "
      f"weight-streaming floor {floor:.1f} ms -> ours at {ours_ms / floor:.2f}x the floor")
if "BM_LMStreamingStepGeneralPath" in ours:
    gen_ms = ours["BM_LMStreamingStepGeneralPath"]["real_time"]
    print(f"  ours without the fused attention step: {gen_ms:.1f} ms ({gen_ms / ours_ms:.2f}x the fused step)")
PYEOF
done
