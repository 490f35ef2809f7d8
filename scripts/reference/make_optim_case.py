#!/usr/bin/env python3
"""Reference case for src/train/optim.cpp, produced by PyTorch itself.

Runs torch.optim.AdamW (foreach=False, betas (0.9, 0.95), eps 1e-8, weight decay 0.1) driven by
torch.optim.lr_scheduler.OneCycleLR (max_lr 3e-3 for group 0 and 3e-2 for group 1, total_steps 7,
pct_start 0.25, cosine, momentum cycling on) for 6 steps over three small float32 parameters, with
torch.nn.utils.clip_grad_norm_(max_norm=0.5) before every step. The gradients are fixed pseudo-random
tensors (seeded), scaled per step so that clipping bites on some steps and not on others.

Everything the C++ test needs to replay the run is stored in tests/data/optim_case.safetensors:
  init.<name>            parameter before the first step (float32)
  grad.<k>.<name>        gradient given at step k (float32), before clipping
  param.<k>.<name>       parameter after step k
  lr, beta1              [steps, groups] float64: the values the k-th optimizer.step() used
  norm                   [steps] float64: total gradient norm returned by clip_grad_norm_
  clipped                [steps] int64: 1 where the norm exceeded max_norm
The configuration is repeated in the header's __metadata__.

Usage (the project's torch venv; no other package needed, the file format is written here):
  ~/.cache/moshi-ttt/torch-2.15.0/venv/bin/python scripts/reference/make_optim_case.py \
      [--out tests/data/optim_case.safetensors]
"""
import argparse
import json
import os
import struct

import torch

STEPS = 6
TOTAL_STEPS = 7
PCT_START = 0.25
MAX_LRS = [3e-3, 3e-2]
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_NORM = 0.5
SEED = 20240607
# name, shape, group
PARAMS = [("a", (4, 3), 0), ("b", (5,), 0), ("c", (2, 2, 2), 1)]
# Per-step gradient scale: the raw gradients have a total norm of about 4.5, so steps with a
# scale above ~0.11 get clipped and the others pass through unchanged.
GRAD_SCALE = [0.05, 1.0, 0.08, 2.0, 0.02, 0.5]

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: u64 LE header size, JSON header, then the raw little-endian data."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "data", "optim_case.safetensors"))
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(SEED)
    params = {n: torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32)) for n, s, _ in PARAMS}
    grads = [{n: torch.randn(s, generator=gen, dtype=torch.float32) * GRAD_SCALE[k] for n, s, _ in PARAMS}
             for k in range(STEPS)]

    out = [(f"init.{n}", params[n].detach().clone()) for n, _, _ in PARAMS]
    groups = [{"params": [params[n] for n, _, g in PARAMS if g == gi]} for gi in range(len(MAX_LRS))]
    opt = torch.optim.AdamW(groups, lr=MAX_LRS[0], betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LRS, total_steps=TOTAL_STEPS,
                                                pct_start=PCT_START)  # cos, cycle_momentum, 0.85/0.95

    lrs, beta1s, norms, clipped = [], [], [], []
    for k in range(STEPS):
        for n, _, _ in PARAMS:
            params[n].grad = grads[k][n].clone()
            out.append((f"grad.{k}.{n}", grads[k][n]))
        # The values this optimizer.step() uses: set by the scheduler at construction / its last step().
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        beta1s.append([float(g["betas"][0]) for g in opt.param_groups])
        norm = torch.nn.utils.clip_grad_norm_([params[n] for n, _, _ in PARAMS], MAX_NORM)
        norms.append(float(norm))
        clipped.append(int(float(norm) > MAX_NORM))
        opt.step()
        sched.step()
        for n, _, _ in PARAMS:
            out.append((f"param.{k}.{n}", params[n].detach().clone()))

    assert any(clipped) and not all(clipped), f"clipping must bite on some steps only: {norms}"
    out += [("lr", torch.tensor(lrs, dtype=torch.float64)),
            ("beta1", torch.tensor(beta1s, dtype=torch.float64)),
            ("norm", torch.tensor(norms, dtype=torch.float64)),
            ("clipped", torch.tensor(clipped, dtype=torch.int64))]
    meta = {
        "torch": torch.__version__, "seed": str(SEED), "steps": str(STEPS), "total_steps": str(TOTAL_STEPS),
        "pct_start": repr(PCT_START), "max_lrs": json.dumps(MAX_LRS), "betas": json.dumps(BETAS),
        "eps": repr(EPS), "weight_decay": repr(WEIGHT_DECAY), "max_norm": repr(MAX_NORM),
        "params": json.dumps([[n, list(s), g] for n, s, g in PARAMS]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(args.out, out, meta)
    print(f"wrote {args.out}: norms {['%.4f' % x for x in norms]}, clipped {clipped}")
    print(f"lr {lrs}\nbeta1 {beta1s}")


if __name__ == "__main__":
    main()
