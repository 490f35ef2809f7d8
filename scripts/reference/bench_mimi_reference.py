#!/usr/bin/env python3
"""Times Kyutai's reference Mimi (moshi.models.loaders.get_mimi, PyPI moshi==0.2.13) with the released
config and random weights (the cost does not depend on the values), fp32, batch 1, on CPU, as
bench/bench_mimi.cpp times ours:
  - whole-signal encode and decode of 10 s of audio: real-time factor (audio seconds per second);
  - streaming with one 80 ms frame (1920 samples) per call inside `mimi.streaming(1)`: ms per frame.
Medians over --runs after one warm-up run. Prints one JSON line (also written to --out).

  PY=$(scripts/reference/setup_reference_env.sh | tail -1)
  $PY scripts/reference/bench_mimi_reference.py --threads 2 --out build/reference/ref_mimi.json
Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from moshi.models import loaders  # noqa: E402


def timed(fn, runs):
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--stream-frames", type=int, default=25)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=8)
    mimi.eval()
    sr, fs = mimi.sample_rate, 1920
    frames = int(round(a.seconds * 12.5))
    wav = torch.randn(1, 1, frames * fs) * 0.1
    load0 = os.getloadavg()[0]
    res = {"torch": torch.__version__, "threads": a.threads, "load_before": load0}
    with torch.no_grad():
        codes = mimi.encode(wav)
        t_enc = timed(lambda: mimi.encode(wav), a.runs)
        t_dec = timed(lambda: mimi.decode(codes), a.runs)
        res["encode_x_realtime"] = (frames * fs / sr) / t_enc
        res["decode_x_realtime"] = (frames * fs / sr) / t_dec
        n = a.stream_frames
        sw = wav[..., : n * fs]
        sc = codes[..., :n]

        def stream_encode():
            with mimi.streaming(1):
                for f in range(n):
                    mimi.encode(sw[..., f * fs:(f + 1) * fs])

        def stream_decode():
            with mimi.streaming(1):
                for f in range(n):
                    mimi.decode(sc[..., f:f + 1])

        res["stream_encode_ms_per_frame"] = 1000 * timed(stream_encode, a.runs) / n
        res["stream_decode_ms_per_frame"] = 1000 * timed(stream_decode, a.runs) / n
    res["load_after"] = os.getloadavg()[0]
    line = json.dumps(res)
    print(line)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
