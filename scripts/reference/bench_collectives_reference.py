#!/usr/bin/env python3
"""The cases of `moshi-ttt collectives` (src/dist/selftest.cpp), run with Python's torch.distributed on
the Gloo backend, so our C++ c10d path has a reference measured on the same machine.

Start it under torchrun, one process per rank:
  PY=~/.cache/moshi-ttt/torch-2.15.0/venv/bin/python
  OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc-per-node 2 --standalone \
      scripts/reference/bench_collectives_reference.py --sizes 1MiB,25MiB --iters 3 --json ref.jsonl
(`python -m torch.distributed.run` is torchrun; the venv's bin/torchrun has a stale shebang.)

Each case is built and timed the way selftest.cpp does it:
  - "bytes" is the whole tensor of the collective: all_reduce's tensor, reduce_scatter's input (its
    output is bytes/N), all_gather's output (its input is bytes/N), broadcast's tensor; every rank holds
    max(1, bytes / element size / N) elements of it, so the bytes reported are the ones actually run;
  - the values are small integers that sum exactly even in bf16; one untimed run is checked element by
    element against the exact answer;
  - then a barrier (an all_reduce of one float), K back-to-back runs, each waited for (the calls below are
    synchronous), and the mean time of one run; the slowest rank's mean is reported (all_reduce MAX);
  - algbw = bytes / seconds; busbw = algbw x 2(n-1)/n for all_reduce, (n-1)/n for reduce_scatter and
    all_gather, x1 for broadcast (nccl-tests' convention).
Rank 0 prints a table and writes one JSON line per case to --json, in our format, with backend
"gloo-python". A collective this Gloo build refuses for a dtype gives {"unsupported": true} instead of
failing the run. Exits 1 when any element is wrong.
"""
import argparse
import json
import math
import os
import re
import sys
import time

import torch
import torch.distributed as dist

# How c10::toString spells the dtypes (our JSON uses those names).
DTYPES = {
    "float32": (torch.float32, "Float"), "fp32": (torch.float32, "Float"),
    "bfloat16": (torch.bfloat16, "BFloat16"), "bf16": (torch.bfloat16, "BFloat16"),
    "float16": (torch.float16, "Half"), "fp16": (torch.float16, "Half"),
}
OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast")
UNITS = {"": 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3, "GiB": 1024**3,
         "kB": 1e3, "MB": 1e6, "GB": 1e9}


def parse_bytes(s):
    """Like dist::parse_bytes: a number (1, 2.5, 1e6) and an optional unit."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+?)([A-Za-z]*)\s*", s)
    if not m or m.group(2) not in UNITS:
        raise SystemExit(f"--sizes: '{s}' is not a byte count like 1, 4KiB, 25MiB, 1GiB")
    v = float(m.group(1))
    if not math.isfinite(v) or v < 1:
        raise SystemExit(f"--sizes: '{s}' is not a byte count like 1, 4KiB, 25MiB, 1GiB")
    return int(round(v * UNITS[m.group(2)]))


def human(b):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b / scale:.4g} {unit}"
    return f"{b} B"


def pattern(n, offset, r, dtype):
    # Rank r's values at elements [offset, offset + n): integers in [-8, 8), built in int32 as ours are.
    v = torch.arange(offset, offset + n, dtype=torch.int32)
    v.mul_(7).add_(r * 3).remainder_(16).sub_(8)
    return v.to(dtype)


def summed(n, offset, world, dtype):
    s = torch.zeros(n, dtype=torch.int32)
    for r in range(world):
        s += pattern(n, offset, r, torch.int32)
    return s.to(dtype)


def prepare(op, per_rank, rank, world, dtype):
    """(the call that runs the collective once, the tensor it writes, the exact answer)."""
    total = per_rank * world
    if op == "all_reduce":
        a = pattern(total, 0, rank, dtype)
        return (lambda: dist.all_reduce(a)), a, summed(total, 0, world, dtype)
    if op == "reduce_scatter":
        a, b = pattern(total, 0, rank, dtype), torch.empty(per_rank, dtype=dtype)
        return (lambda: dist.reduce_scatter_tensor(b, a)), b, summed(per_rank, rank * per_rank, world, dtype)
    if op == "all_gather":
        a, b = pattern(per_rank, 0, rank, dtype), torch.empty(total, dtype=dtype)
        want = torch.cat([pattern(per_rank, 0, q, dtype) for q in range(world)])
        return (lambda: dist.all_gather_into_tensor(b, a)), b, want
    a = pattern(total, 0, 0, dtype) if rank == 0 else torch.zeros(total, dtype=dtype)
    return (lambda: dist.broadcast(a, 0)), a, pattern(total, 0, 0, dtype)


def barrier():
    dist.all_reduce(torch.zeros(1, dtype=torch.float32))


def run_case(op, dtype, bytes_, iters, rank, world):
    elem = torch.empty(0, dtype=dtype).element_size()
    per_rank = max(1, bytes_ // elem // world)
    res = {"bytes": per_rank * world * elem}
    run, out, want = prepare(op, per_rank, rank, world, dtype)
    # A dtype or collective this build does not implement fails the same way on every rank, before any
    # data moves; the ranks agree on it so that none goes on alone into the timed loop.
    refused = 0.0
    try:
        run()
    except (RuntimeError, NotImplementedError, ValueError) as e:
        refused = 1.0
        res["error"] = str(e).splitlines()[0][:200]
    flag = torch.tensor([refused], dtype=torch.float64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        res["unsupported"] = True
        return res
    wrong = int(out.ne(want).sum().item())
    del want
    barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    seconds = (time.perf_counter() - t0) / iters
    agg = torch.tensor([float(wrong)], dtype=torch.float64)
    dist.all_reduce(agg)  # wrong elements, summed over ranks (as ours reports them)
    slow = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(slow, op=dist.ReduceOp.MAX)
    n = float(world)
    factor = {"all_reduce": 2 * (n - 1) / n, "broadcast": 1.0}.get(op, (n - 1) / n)
    res["seconds"] = slow.item()
    res["algbw_gbs"] = res["bytes"] / res["seconds"] / 1e9
    res["busbw_gbs"] = res["algbw_gbs"] * factor
    res["wrong"] = int(agg.item())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4B,4KiB,1MiB,25MiB", help="comma-separated: 4B,4KiB,25MiB,256MiB ...")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="float32, bfloat16, float16")
    ap.add_argument("--ops", default=",".join(OPS), help=", ".join(OPS))
    ap.add_argument("--iters", type=int, default=3, help="timed repetitions per case")
    ap.add_argument("--json", default="", help="one JSON line per case (rank 0)")
    a = ap.parse_args()
    if a.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {a.iters}")
    sizes = [parse_bytes(s) for s in a.sizes.split(",") if s]
    dtypes = []
    for s in a.dtypes.split(","):
        if s not in DTYPES:
            raise SystemExit(f"--dtypes: unknown dtype '{s}' (float32, bfloat16, float16)")
        dtypes.append(DTYPES[s])
    ops = [s for s in a.ops.split(",") if s]
    for s in ops:
        if s not in OPS:
            raise SystemExit(f"--ops: unknown collective '{s}' ({', '.join(OPS)})")
    if "RANK" not in os.environ:
        raise SystemExit("start this under torchrun (python -m torch.distributed.run --nproc-per-node N --standalone)")

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    lines = []
    # The loop order of run_selftest: dtype, then size, then collective.
    for dtype, dname in dtypes:
        for b in sizes:
            for op in ops:
                r = run_case(op, dtype, b, a.iters, rank, world)
                lines.append({"collective": op, "dtype": dname, "bytes": r["bytes"], "ranks": world,
                              "backend": "gloo-python", **{k: v for k, v in r.items() if k != "bytes"}})
    total_wrong = sum(x.get("wrong", 0) for x in lines)
    if rank == 0:
        print(f"gloo (torch.distributed {torch.__version__}), {world} ranks, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, {torch.get_num_threads()} intra-op threads")
        print(f"{'collective':<15} {'dtype':<9} {'size':>12} {'time':>10} {'algbw GB/s':>12} {'busbw GB/s':>12} exact")
        for x in lines:
            if x.get("unsupported"):
                print(f"{x['collective']:<15} {x['dtype']:<9} {human(x['bytes']):>12}   unsupported: {x['error']}")
                continue
            print(f"{x['collective']:<15} {x['dtype']:<9} {human(x['bytes']):>12} {x['seconds'] * 1e3:8.3f}ms "
                  f"{x['algbw_gbs']:12.3f} {x['busbw_gbs']:12.3f} {str(x['wrong']) + ' wrong' if x['wrong'] else 'yes'}")
        if a.json:
            os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
            tmp = a.json + ".tmp"
            with open(tmp, "w") as f:
                for x in lines:
                    f.write(json.dumps(x) + "\n")
            os.replace(tmp, a.json)
        if total_wrong:
            print(f"error: {total_wrong} elements differ from the exact result", file=sys.stderr)
    dist.destroy_process_group()
    sys.exit(1 if total_wrong else 0)


if __name__ == "__main__":
    main()
