#!/usr/bin/env python3
"""Times Kyutai's reference LM (moshi.models.lm.LMModel, PyPI moshi==0.2.13) on the small LM that
moshi-ttt benchmarks, on CPU in fp32, so the C++ figures have a side-by-side reference.

Measures
  (a) forward: LMModel.forward on codes [1, 17, T] (T=256 by default) under torch.no_grad();
      tokens/s counts time steps (T per forward); median over --runs after --warmup runs.
  (b) streaming: LMGen(model, use_sampling=False) (greedy), B=1, random user codes [1, 8, 1] per
      step; median ms/step over --steps after --warmup-steps.

torch.compile: moshi decorates a few functions with torch.compile unless NO_TORCH_COMPILE is set
when it is imported. --compile on|off picks one in this process; --compile both (the default unless
NO_TORCH_COMPILE is set in the environment, which means off) runs this script twice in subprocesses
(with and without NO_TORCH_COMPILE=1) and reports both.
NO_CUDA_GRAPH=1 is set too (CUDA graphs are disabled on CPU anyway).

Run with the venv from setup_reference_env.sh:
  PY=$(scripts/reference/setup_reference_env.sh | tail -1)
  $PY scripts/reference/bench_lm_reference.py --out ref.json \
      --save-config lm_config.json --save-weights lm.safetensors
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def lm_kwargs(args):
    """LMModel kwargs: Kyutai's moshi-7B layout (moshi.models.loaders._lm_kwargs), scaled down."""
    dim, dep_dim, hidden_scale = 512, 256, 4.125
    return {
        "dim": dim,
        "text_card": 32000,
        "existing_text_padding_id": 3,
        "n_q": 16,
        "dep_q": 8,
        "card": 2048,
        "num_heads": 8,
        "num_layers": 8,
        "hidden_scale": hidden_scale,
        "causal": True,
        "layer_scale": None,
        "context": 3000,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": dep_dim,
        "depformer_dim_feedforward": int(hidden_scale * dep_dim),
        "depformer_num_heads": args.depformer_num_heads,
        "depformer_num_layers": 2,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": [0] + [0, 1, 1, 1, 1, 1, 1, 1] * 2,
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile", choices=["on", "off", "both"], default=None,
                   help="torch.compile as moshi does it (on), disabled (off), or both in subprocesses "
                        "(default: off if NO_TORCH_COMPILE is set, else both)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--T", type=int, default=256, help="time steps per forward")
    p.add_argument("--warmup", type=int, default=3, help="forward warm-up runs")
    p.add_argument("--runs", type=int, default=10, help="timed forward runs")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=50, help="timed streaming steps")
    p.add_argument("--depformer-num-heads", type=int, default=4)
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-streaming", action="store_true")
    p.add_argument("--out", help="also write the JSON line to this file")
    p.add_argument("--save-config", help="write the LMModel kwargs as JSON here")
    p.add_argument("--save-weights", help="write the model's state_dict as safetensors here")
    return p.parse_args()


def run_both(args):
    """Re-runs this script with compile off and on; merges the two results."""
    results = {}
    for mode in ["off", "on"]:
        cmd = [sys.executable, os.path.abspath(__file__), "--compile", mode]
        for k in ["threads", "seed", "T", "warmup", "runs", "warmup_steps", "steps", "depformer_num_heads"]:
            cmd += ["--" + k.replace("_", "-"), str(getattr(args, k))]
        if args.skip_forward:
            cmd.append("--skip-forward")
        if args.skip_streaming:
            cmd.append("--skip-streaming")
        if mode == "off":  # same seed, same model: save it once
            if args.save_config:
                cmd += ["--save-config", args.save_config]
            if args.save_weights:
                cmd += ["--save-weights", args.save_weights]
        print(f"[bench] running with torch.compile {mode}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode != 0 or not lines:
            results[mode] = {"error": f"exit code {r.returncode}"}
        else:
            results[mode] = json.loads(lines[-1])
            print(f"[bench] compile {mode}: {lines[-1]}", file=sys.stderr, flush=True)
    base = dict(results.get("off", {}))
    if "env" in base and "env" in results.get("on", {}):
        base["env"] = dict(base["env"], loadavg_after=results["on"]["env"].get("loadavg_after"))
    merged = {
        "what": "kyutai moshi LMModel reference, CPU fp32",
        "config": base.get("config"),
        "env": base.get("env"),
        "compile_off": {k: v for k, v in base.items() if k not in ("config", "env", "what")},
        "compile_on": {k: v for k, v in results.get("on", {}).items() if k not in ("config", "env", "what")},
    }
    emit(merged, args.out)


def emit(obj, out):
    line = json.dumps(obj, sort_keys=False)
    print(line, flush=True)
    if out:
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        with open(out, "w") as f:
            f.write(line + "\n")


def run_one(args):
    if args.compile == "off":
        os.environ["NO_TORCH_COMPILE"] = "1"
    else:
        os.environ.pop("NO_TORCH_COMPILE", None)
    os.environ.setdefault("NO_CUDA_GRAPH", "1")

    import torch  # noqa: E402  (after the env is set: moshi reads it at import)
    import importlib.metadata as md
    from moshi.models.lm import LMModel, LMGen

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kwargs = lm_kwargs(args)
    model = LMModel(**kwargs, device="cpu", dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[bench] compile={args.compile} threads={torch.get_num_threads()} "
          f"depformer_num_heads={kwargs['depformer_num_heads']} params={n_params / 1e6:.1f}M",
          file=sys.stderr, flush=True)

    if args.save_config:
        with open(args.save_config, "w") as f:
            json.dump(kwargs, f, indent=2)
            f.write("\n")
    if args.save_weights:
        from safetensors.torch import save_file
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, args.save_weights, metadata={"format": "pt", "source": "moshi==" + md.version("moshi"),
                                                   "seed": str(args.seed)})

    result = {
        "what": "kyutai moshi LMModel reference, CPU fp32",
        "config": kwargs,
        "env": {"torch": torch.__version__, "moshi": md.version("moshi"), "threads": torch.get_num_threads(),
                "seed": args.seed, "params": n_params, "python": sys.version.split()[0]},
        "torch_compile": args.compile == "on",
    }
    # Other processes on the machine skew 2-thread timings badly (OpenMP threads wait on each other):
    # the load average before and after is kept with the figures.
    result["env"]["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    g = torch.Generator().manual_seed(args.seed + 1)
    K = model.num_codebooks

    if not args.skip_forward:
        codes = torch.cat([torch.randint(0, model.text_card, (1, 1, args.T), generator=g),
                           torch.randint(0, model.card, (1, K - 1, args.T), generator=g)], dim=1)
        times = []
        t_compile = None
        with torch.no_grad():
            for i in range(args.warmup + args.runs):
                t0 = time.perf_counter()
                out = model(codes)
                _ = out.logits.sum().item()  # touch the result
                dt = time.perf_counter() - t0
                if i == 0:
                    t_compile = dt
                if i >= args.warmup:
                    times.append(dt)
        med = statistics.median(times)
        result["forward"] = {
            "T": args.T, "shape": [1, K, args.T], "runs": args.runs, "warmup": args.warmup,
            "median_ms": med * 1e3, "min_ms": min(times) * 1e3, "first_run_ms": t_compile * 1e3,
            "tokens_per_s": args.T / med,
        }
        print(f"[bench] forward T={args.T}: {med * 1e3:.1f} ms median, {args.T / med:.1f} tok/s",
              file=sys.stderr, flush=True)

    if not args.skip_streaming:
        lm_gen = LMGen(model, use_sampling=False)
        n_user = K - 1 - model.dep_q
        total = args.warmup_steps + args.steps
        user = torch.randint(0, model.card, (total, 1, n_user, 1), generator=g)
        times = []
        first = None
        with torch.no_grad(), lm_gen.streaming(1):
            for i in range(total):
                t0 = time.perf_counter()
                tokens = lm_gen.step(user[i])
                if tokens is not None:
                    _ = tokens.sum().item()
                dt = time.perf_counter() - t0
                if i == 0:
                    first = dt
                if i >= args.warmup_steps:
                    times.append(dt)
        med = statistics.median(times)
        times.sort()
        result["streaming"] = {
            "B": 1, "user_codes": [1, n_user, 1], "greedy": True, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "median_ms": med * 1e3, "min_ms": times[0] * 1e3,
            "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3, "first_step_ms": first * 1e3,
            "steps_per_s": 1.0 / med,
        }
        print(f"[bench] streaming: {med * 1e3:.2f} ms/step median", file=sys.stderr, flush=True)

    result["env"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.out)


def main():
    args = parse_args()
    if args.compile is None:
        args.compile = "off" if os.environ.get("NO_TORCH_COMPILE") else "both"
    if args.compile == "both":
        run_both(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
