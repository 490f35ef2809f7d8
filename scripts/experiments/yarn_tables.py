#!/usr/bin/env python3
"""Helpers of yarn_context_extension.sh (numpy only; reads and writes safetensors by hand).

  yarn_tables.py batch DATA_DIR OUT.safetensors
      stack the files of a token dataset (index.jsonl order) into codes [N, K, T] for `moshi-ttt score`
  yarn_tables.py table TRAIN_FRAMES NAME=CE.safetensors ... --recall DATA_DIR
      cross-entropy (mean over the scored streams of each frame) by position bin, and on the recall
      frames (DATA_DIR/recall.safetensors) inside and beyond the training length, one row per condition
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"I64": np.int64, "F32": np.float32, "U8": np.uint8, "BOOL": np.bool_, "I32": np.int32}


def read(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write(path, name, array):
    array = np.ascontiguousarray(array.astype(np.int64))
    header = json.dumps({name: {"dtype": "I64", "shape": list(array.shape), "data_offsets": [0, array.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(header)) + header + array.tobytes())


def batch(data_dir, out):
    d = Path(data_dir)
    rows = [json.loads(l) for l in (d / "index.jsonl").read_text().splitlines() if l.strip()]
    codes = np.stack([read(d / r["path"])["codes"] for r in rows])
    write(out, "codes", codes)
    print(f"{out}: codes {list(codes.shape)}")


def table(train_frames, runs, recall_dir):
    recall = read(Path(recall_dir) / "recall.safetensors")["recall"].astype(bool) if recall_dir else None
    first = True
    for spec in runs:
        name, path = spec.split("=", 1)
        ce = read(path)["ce"].astype(np.float64)  # [N, 1 + dep_q, T], NaN where not scored
        per_frame = np.nanmean(ce, axis=1)  # mean over the scored streams
        T = per_frame.shape[1]
        bins = list(range(0, T, train_frames))
        cols = [f"{b}-{min(b + train_frames, T) - 1}" for b in bins]
        vals = [np.nanmean(per_frame[:, b : b + train_frames]) for b in bins]
        extra_h, extra_v = [], []
        if recall is not None:
            pos = np.arange(T)[None, :]
            inside = recall & (pos < train_frames)
            beyond = recall & (pos >= train_frames)
            extra_h = ["recall < train len", "recall beyond"]
            extra_v = [np.nanmean(per_frame[inside]) if inside.any() else float("nan"), np.nanmean(per_frame[beyond])]
        if first:
            h = ["condition"] + [f"CE frames {c}" for c in cols] + extra_h
            print("| " + " | ".join(h) + " |")
            print("|" + "---|" * len(h))
            first = False
        print("| " + " | ".join([name] + [f"{v:.3f}" for v in vals + extra_v]) + " |")


def main(argv):
    if len(argv) >= 3 and argv[0] == "batch":
        return batch(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "table":
        recall_dir = None
        if "--recall" in argv:
            i = argv.index("--recall")
            recall_dir = argv[i + 1]
            argv = argv[:i] + argv[i + 2 :]
        return table(int(argv[1]), argv[2:], recall_dir)
    sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
