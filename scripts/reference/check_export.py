#!/usr/bin/env python3
"""Loads `moshi-ttt export` folders with Kyutai's own loader (moshi 0.2.13,
moshi.models.loaders.get_moshi_lm, as `python -m moshi.server` calls it through CheckpointInfo) and
compares its LMModel.forward logits with ours.

  check_export.py PLAN.json      # a list of checks, run in one process (importing torch is slow)

Each check is an object:
  {"name": ..., "export": OUT, "codes": codes.safetensors, "ours": ours.safetensors,
   "base": BASE (LoRA exports: what --moshi-weight names), "fuse": true|false (default true, as moshi.server)}
or, for the premise that a training checkpoint's own adapters break Kyutai's loader:
  {"name": ..., "raw_lora": CKPT/consolidated, "base": BASE}

`codes` holds `codes` [B, K, T] (int64); `ours` our logits for them: `text_logits` [B, 1, T, text_card] and
`logits` [B, dep_q, T, card] (`moshi-ttt score --logits --out`). The export folder holds config.json and
either lora.safetensors or consolidated.safetensors. Everything runs in float32 on the CPU. An unfused
LoRA check also checks that the file holds adapters for exactly the linears Kyutai wraps (none left on
meta, none unexpected).
Prints one JSON line per check: max absolute and relative differences (relative to the largest of our
logits) of text and audio logits over the positions Kyutai's masks mark valid; for raw_lora
{"refused": true, "error": ...} when Kyutai's loader raises, {"refused": false} otherwise.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from moshi.models import loaders
from moshi.modules.lora import LoRALinear


def lm_kwargs(config_path):
    # What CheckpointInfo.from_hf_repo leaves of config.json for get_moshi_lm.
    cfg = json.loads(Path(config_path).read_text())
    for k in ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
              "lm_gen_config", "tts_config", "stt_config", "model_id"):
        cfg.pop(k, None)
    return cfg


def wrapped_linears(model):
    return {name for name, mod in model.named_modules() if isinstance(mod, LoRALinear)}


def load(c):
    export = Path(c["export"])
    kwargs = lm_kwargs(export / "config.json")
    lora_file = export / "lora.safetensors"
    info = {}
    if not lora_file.exists():
        assert kwargs.get("lora") is False, "a merged export's config.json must say lora: false"
        model = loaders.get_moshi_lm(str(export / "consolidated.safetensors"), lm_kwargs=kwargs, device="cpu",
                                     dtype=torch.float32)
        return model.eval(), info
    assert kwargs.get("lora") is True, "a LoRA export's config.json must say lora: true"
    fuse = c.get("fuse", True)
    model = loaders.get_moshi_lm(c["base"], lm_kwargs=kwargs, device="cpu", dtype=torch.float32,
                                 lora_weights=str(lora_file), fuse_lora=fuse)
    if fuse:
        assert not wrapped_linears(model), "fused model still holds LoRALinear modules"
    else:
        # Unfused, the LoRALinear modules stay: the file must cover every one of them.
        wrapped = wrapped_linears(model)
        keys = set(load_file(str(lora_file)).keys())
        want = {f"{n}.lora_{ab}.weight" for n in wrapped for ab in "AB"}
        assert keys == want, (f"file vs Kyutai's wrapped linears: extra {sorted(keys - want)[:5]}, "
                              f"missing {sorted(want - keys)[:5]}")
        on_meta = [n for n, p in model.named_parameters() if p.is_meta]
        assert not on_meta, f"parameters left on meta: {on_meta[:5]}"
        info["wrapped_linears"] = len(wrapped)
    return model.eval(), info


def compare(ours, theirs, mask):
    ours, theirs = ours[mask], theirs[mask]
    diff = (ours.double() - theirs.double()).abs().max().item()
    return diff, diff / max(ours.abs().max().item(), 1e-12)


def raw_lora(c):
    ck = Path(c["raw_lora"])
    try:
        loaders.get_moshi_lm(c["base"], lm_kwargs=lm_kwargs(ck / "config.json"), device="cpu", dtype=torch.float32,
                             lora_weights=str(ck / "lora.safetensors"), fuse_lora=True)
        return {"refused": False}
    except RuntimeError as e:
        return {"refused": True, "error": str(e)[:400]}


def run_check(c):
    if "raw_lora" in c:
        return raw_lora(c)
    model, info = load(c)
    ours = load_file(c["ours"])
    with torch.no_grad():
        out = model(load_file(c["codes"])["codes"])
    text_mask = out.text_mask.unsqueeze(-1).expand_as(out.text_logits)
    audio_mask = out.mask.unsqueeze(-1).expand_as(out.logits)
    t_abs, t_rel = compare(ours["text_logits"], out.text_logits, text_mask)
    a_abs, a_rel = compare(ours["logits"], out.logits, audio_mask)
    return dict(info, text_max_abs=t_abs, text_max_rel=t_rel, audio_max_abs=a_abs, audio_max_rel=a_rel)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", help="JSON list of checks")
    args = ap.parse_args()
    torch.manual_seed(0)
    failed = 0
    for c in json.loads(Path(args.plan).read_text()):
        try:
            r = run_check(c)
        except Exception as e:  # reported per check; the others still run
            r = {"error": f"{type(e).__name__}: {e}"[:600]}
            failed += 1
        print(json.dumps(dict(name=c.get("name", ""), **r)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
