#!/usr/bin/env python3
"""Times the reference TTT layers (ttt-lm-pytorch's ttt.py) the way bench/bench_ttt.cpp times ours.

Usage: python bench_ttt_reference.py PATH_TO_ttt-lm-pytorch_checkout [--threads 2] [--L 2048] [--reps 5] [--device cuda]

ttt.py imports `transformers` only for its model wrappers; the layer classes need none of it, so we
install tiny stand-in modules before loading ttt.py instead of installing transformers. PATH may be a
work tree (containing ttt.py) or a bare git directory (ttt.py is read with `git show HEAD:ttt.py`).

Figures: forward (under no_grad) and forward+backward (backward of sum(y * grad_out), all parameter and
input gradients) in tokens/s and GFLOP/s of useful work (same FLOP count formula as the C++ bench),
plus a measured sgemm 2048x2048 GFLOP/s as the machine's ceiling.
"""
import argparse
import os
import subprocess
import sys
import time
import types

import torch
from torch import nn


def install_transformers_stub():
    """Minimal stand-ins for the names ttt.py imports from transformers (never called by the layers)."""
    tf = types.ModuleType("transformers")

    class PretrainedConfig:
        def __init__(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self, k, v)

    class PreTrainedModel(nn.Module):
        def __init__(self, config, *a, **k):
            super().__init__()
            self.config = config

    class ModelOutput(dict):
        pass

    class _Logger:
        def __getattr__(self, name):
            return lambda *a, **k: None

    logging = types.SimpleNamespace(get_logger=lambda name: _Logger())
    tf.PretrainedConfig = PretrainedConfig
    act = types.ModuleType("transformers.activations")
    act.ACT2FN = {"silu": nn.SiLU(), "gelu": nn.GELU()}
    mo = types.ModuleType("transformers.modeling_outputs")
    mo.BaseModelOutputWithPast = ModelOutput
    mo.CausalLMOutputWithPast = ModelOutput
    mu = types.ModuleType("transformers.modeling_utils")
    mu.PreTrainedModel = PreTrainedModel
    ut = types.ModuleType("transformers.utils")
    ut.ModelOutput = ModelOutput
    ut.logging = logging
    iu = types.ModuleType("transformers.utils.import_utils")
    iu.is_causal_conv1d_available = lambda: False
    for name, mod in {"transformers": tf, "transformers.activations": act,
                      "transformers.modeling_outputs": mo, "transformers.modeling_utils": mu,
                      "transformers.utils": ut, "transformers.utils.import_utils": iu}.items():
        sys.modules[name] = mod


def load_ttt_module(path):
    install_transformers_stub()
    if os.path.isfile(os.path.join(path, "ttt.py")):
        src = open(os.path.join(path, "ttt.py")).read()
    else:  # bare git directory
        src = subprocess.check_output(["git", f"--git-dir={path}", "show", "HEAD:ttt.py"], text=True)
    mod = types.ModuleType("ttt_reference")
    exec(compile(src, "ttt.py", "exec"), mod.__dict__)
    return mod


def inner_flops(kind, B, L, C, nh, K):
    """Useful FLOPs of one forward (same formula as bench/bench_ttt.cpp): projections + dual form."""
    f = C // nh
    proj = 2 * B * L * C * C * 4  # q, k, v, o
    n = L // K
    if kind == "linear":
        # per head & mini-batch: XK W, XQ W, X^T G (K f f each); XQ XK^T, (E*A) G (K K f each)
        per = 2 * (3 * K * f * f + 2 * K * K * f)
    else:
        h = 4 * f
        # XK W1, X2 W2, G2 W2^T, XQ W1, X2bar W2, X1^T G1, X2^T G2 (K f h each); two K x K scores
        # and two score-times-gradient products (K K f, K K h)
        per = 2 * (7 * K * f * h + 2 * K * K * f + 2 * K * K * h)
    return proj + B * nh * n * per


def timeit(fn, reps, sync=lambda: None):
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--L", type=int, default=2048)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ttt = load_ttt_module(args.path)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    a = torch.randn(2048, 2048, device=dev)
    b = torch.randn(2048, 2048, device=dev)
    t = timeit(lambda: a @ b, args.reps, sync)
    print(f"sgemm 2048^2: {2 * 2048**3 / t / 1e9:.1f} GFLOP/s")

    C, nh, K, B, L = 768, 12, 16, args.B, args.L
    for kind, cls, lr in (("linear", ttt.TTTLinear, 1.0), ("mlp", ttt.TTTMLP, 0.1)):
        cfg = ttt.TTTConfig(hidden_size=C, num_attention_heads=nh, mini_batch_size=K, ttt_layer_type=kind,
                            ttt_base_lr=lr, num_hidden_layers=1)
        torch.manual_seed(0)
        layer = cls(cfg, layer_idx=0).train().to(dev)
        x = torch.randn(B, L, C, device=dev)
        pos = torch.arange(L, device=dev).unsqueeze(0).expand(B, L)
        gout = torch.randn(B, L, C, device=dev)
        flops = inner_flops(kind, B, L, C, nh, K)

        def fwd():
            with torch.no_grad():
                layer(x, position_ids=pos)

        xg = x.clone().requires_grad_(True)

        def fwdbwd():
            layer.zero_grad(set_to_none=True)
            xg.grad = None
            y = layer(xg, position_ids=pos)
            (y * gout).sum().backward()

        tf = timeit(fwd, args.reps, sync)
        tb = timeit(fwdbwd, args.reps, sync)
        print(f"reference ttt-{kind} fwd:     {B * L / tf:10.0f} tok/s  {tf * 1e3:8.1f} ms  {flops / tf / 1e9:6.1f} GFLOP/s")
        print(f"reference ttt-{kind} fwd+bwd: {B * L / tb:10.0f} tok/s  {tb * 1e3:8.1f} ms  {3 * flops / tb / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
