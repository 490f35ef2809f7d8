#!/usr/bin/env python3
"""Summary of one round of compare_train.sh: ours against moshi-finetune's step (compile off / on) per
model and batch, as ratios, with useful GFLOP/s next to the sgemm rate of the same run, and the
issue-26 goals checked. Usage: summarize_train.py DIR ROUND "MODELS" "SIZES" (as compare_train.sh)."""
import json
import os
import sys

BENCH_MODEL = {"small:full": 0, "small:lora": 1, "tiny:full": 2}
GOAL_RATIO, GOAL_FWD_PEAK, GOAL_STEP_PEAK = 1.3, 0.80, 0.70


def load_json_line(path):
    if not os.path.exists(path):
        return None
    lines = open(path).read().strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def main():
    d, r, models, sizes = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
    ours = json.load(open(f"{d}/ours_{r}.json"))["benchmarks"]
    fwd = json.load(open(f"{d}/ours_fwd_{r}.json"))["benchmarks"]
    sgemm = [b["GFLOP/s"] for b in ours + fwd if "Sgemm" in b["name"]]
    peak = max(sgemm)
    rows = {}
    for b in ours:
        if b["name"].startswith("BM_TrainStep/"):
            m, T, B = (int(x) for x in b["name"].split("/")[1:4])
            rows[(m, T, B)] = b
    ctx = ours[0].get("context", {}) if ours else {}
    print(f"round {r}: sgemm 2048 {peak:.0f} GFLOP/s (best of {len(sgemm)} in this run); "
          f"goals: step >= {GOAL_RATIO}x moshi-finetune's best, forward >= {GOAL_RATIO}x Kyutai's best, "
          f"useful GFLOP/s >= {GOAL_FWD_PEAK:.0%} (forward) / {GOAL_STEP_PEAK:.0%} (step) of sgemm")
    print(f"{'model':<18}{'T x B':>9}{'ours fr/s':>11}{'ref off':>9}{'ref on':>9}{'ours/best':>10}"
          f"{'ours GF/s':>10}{'% sgemm':>8}{'ref % sgemm':>12}  path")
    goals = []
    for m in models:
        for s in sizes:
            T, B = (int(x) for x in s.split("x"))
            b = rows.get((BENCH_MODEL[m], T, B))
            refs = {c: load_json_line(f"{d}/ref_{r}_{m.replace(':', '_')}_{T}x{B}_{c}.json") for c in ("off", "on")}
            rfps = {c: (v["train"]["tokens_per_s"] if v else float("nan")) for c, v in refs.items()}
            if b is None:
                print(f"{m:<18}{s:>9}  (no bench_train row)")
                continue
            fps, gf = b["frames/s"], b["GFLOP/s"]
            best = max(v for v in rfps.values() if v == v) if any(v == v for v in rfps.values()) else float("nan")
            ratio = fps / best
            ref_gf = gf / fps * best  # the same useful work per frame
            path = b.get("label", "").split(", ")[-1]
            print(f"{m:<18}{s:>9}{fps:>11.1f}{rfps['off']:>9.1f}{rfps['on']:>9.1f}{ratio:>9.2f}x"
                  f"{gf:>10.1f}{gf / peak:>8.0%}{ref_gf / peak:>12.0%}  {path}")
            if m == "small:full":
                goals.append((f"step {m} {s}: {ratio:.2f}x the best reference", ratio >= GOAL_RATIO))
                goals.append((f"step {m} {s}: {gf / peak:.0%} of sgemm", gf / peak >= GOAL_STEP_PEAK))
    # The TTT model against Kyutai's tiny model without TTT (the reference has no TTT layers).
    for s in sizes:
        T, B = (int(x) for x in s.split("x"))
        b = rows.get((3, T, B))
        ref = load_json_line(f"{d}/ref_{r}_tiny_full_{T}x{B}_off.json")
        if b and ref:
            print(f"{'tiny hybrid TTT':<18}{s:>9}{b['frames/s']:>11.1f}{ref['train']['tokens_per_s']:>9.1f}"
                  f"{'':>9}{b['frames/s'] / ref['train']['tokens_per_s']:>9.2f}x  (reference: tiny without TTT)")
    # Forward, T=256 B=1 on the small model: bench_lm against the reference run's no_grad forward.
    f = [b for b in fwd if b["name"].startswith("BM_LMForward/256/0")]
    refs = {c: load_json_line(f"{d}/ref_{r}_small_full_256x1_{c}.json") for c in ("off", "on")}
    if f and all(refs.values()):
        tok, gf = f[0]["tok/s"], f[0]["GFLOP/s"]
        rt = {c: v["forward"]["tokens_per_s"] for c, v in refs.items()}
        best = max(rt.values())
        print(f"forward small T=256: ours {tok:.0f} tok/s, reference {rt['off']:.0f} (compile off) / {rt['on']:.0f} "
              f"(on) -> {tok / best:.2f}x the best; ours {gf:.0f} GFLOP/s = {gf / peak:.0%} of sgemm, reference "
              f"{gf / tok * best / peak:.0%}; any fp32 forward here <= {tok * peak / gf:.0f} tok/s = "
              f"{tok * peak / gf / best:.2f}x the best reference")
        goals.append((f"forward: {tok / best:.2f}x the best reference", tok / best >= GOAL_RATIO))
        goals.append((f"forward: {gf / peak:.0%} of sgemm", gf / peak >= GOAL_FWD_PEAK))
    print("goals: " + "; ".join(f"{'MET' if ok else 'missed'} {what}" for what, ok in goals))
    if ctx:
        print(f"machine: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs at "
              f"{ctx.get('mhz_per_cpu', '?')} MHz, {ctx.get('date', '')}")


if __name__ == "__main__":
    main()
