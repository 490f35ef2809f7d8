#!/usr/bin/env python3
"""Times ByteDance's official In-Place TTT MLP (Qwen3MLP with TTT, training path
hf_models/hf_qwen3/modeling_qwen3.py of ByteDance-Seed/In-Place-TTT) on the shapes of
bench/bench_inplace.cpp: D 1024, H 2816, chunk 256, T 2048, batch 1, fp32, CPU, 2 threads.

Usage:
  PY=~/.cache/moshi-ttt/refenv-inplace/bin/python    # torch via a .pth file + einops + opt_einsum
  $PY scripts/reference/bench_inplace_reference.py PATH_TO_OFFICIAL_CHECKOUT [--out ref_inplace.json]

PATH may be a work tree or a bare git directory (the file is then read with `git show HEAD:...`).
Only the Qwen3MLP class is taken from the official file (its module imports transformers, which the
MLP does not need): the class source is executed with torch, einops' rearrange/repeat, opt_einsum's
contract and a silu ACT2FN, exactly the names the class uses. Nothing of it is copied here.

Measures, each in a fresh subprocess (so ru_maxrss deltas are per measurement):
  forward:          MLP(x, t) under torch.no_grad(); tokens/s = T / median seconds
  forward_backward: y = MLP(x, t); (y * g).sum().backward(); tokens/s likewise
  peak_rss_mb:      ru_maxrss after the timed runs minus ru_maxrss before the first run
                    (weights and inputs already allocated): the extra memory the computation needed.
"""
import argparse
import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REL = "hf_models/hf_qwen3/modeling_qwen3.py"


def read_official(path):
    f = os.path.join(path, REL)
    if os.path.exists(f):
        return open(f).read()
    git_dir = path if os.path.exists(os.path.join(path, "HEAD")) else os.path.join(path, ".git")
    return subprocess.check_output(["git", "--git-dir", git_dir, "show", "HEAD:" + REL], text=True)


def load_mlp_class(path):
    import torch
    from torch import nn
    from typing import Optional
    from einops import rearrange, repeat
    from opt_einsum import contract

    src = read_official(path)
    tree = ast.parse(src)
    cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen3MLP"]
    if not cls:
        raise SystemExit(f"{REL}: no class Qwen3MLP")
    ns = {"torch": torch, "nn": nn, "Optional": Optional, "rearrange": rearrange, "repeat": repeat,
          "contract": contract, "ACT2FN": {"silu": nn.SiLU()}}
    exec(compile(ast.Module(body=cls, type_ignores=[]), REL, "exec"), ns)
    return ns["Qwen3MLP"]


def measure(args):
    import torch
    from types import SimpleNamespace

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    Qwen3MLP = load_mlp_class(args.official)
    cfg = SimpleNamespace(hidden_size=args.dim, intermediate_size=args.hidden, hidden_act="silu", ttt_mode=True,
                          ttt_layers=[0], ttt_chunk=args.chunk, ttt_proj=True, ttt_lr=1e-3)
    m = Qwen3MLP(cfg, layer_idx=0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)  # random conv too: the released zero init would make the TTT path trivial
    x = torch.randn(1, args.seq, args.dim)
    t = torch.randn(1, args.seq, args.dim)
    g = torch.randn(1, args.seq, args.dim)
    if args.mode == "forward_backward":
        x.requires_grad_(True)
        t.requires_grad_(True)

    def run():
        if args.mode == "forward":
            with torch.no_grad():
                m(x, t)
        else:
            y = m(x, t)
            (y * g).sum().backward()
            for p in list(m.parameters()) + [x, t]:
                p.grad = None

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    med = statistics.median(times)
    return {"mode": args.mode, "median_s": med, "best_s": min(times), "tok_per_s": args.seq / med,
            "best_tok_per_s": args.seq / min(times), "peak_rss_mb": (rss1 - rss0) / 1024.0, "runs": args.runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("official", help="checkout (work tree or bare git dir) of ByteDance-Seed/In-Place-TTT")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=2816)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=["forward", "forward_backward", "both"], default="both")
    ap.add_argument("--out", help="also write the JSON line here")
    args = ap.parse_args()
    if args.mode != "both":
        print(json.dumps(measure(args)))
        return
    res = {"shapes": {"dim": args.dim, "hidden": args.hidden, "chunk": args.chunk, "seq": args.seq, "batch": 1,
                      "dtype": "float32"}, "threads": args.threads, "loadavg_before": os.getloadavg()}
    import torch
    res["torch"] = torch.__version__
    for mode in ["forward", "forward_backward"]:
        cmd = [sys.executable, os.path.abspath(__file__), args.official, "--mode", mode]
        for k in ["dim", "hidden", "chunk", "seq", "threads", "runs", "warmup"]:
            cmd += ["--" + k, str(getattr(args, k))]
        out = subprocess.check_output(cmd, text=True)
        res[mode] = json.loads(out.strip().splitlines()[-1])
    res["loadavg_after"] = os.getloadavg()
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
