#!/usr/bin/env python3
"""Loads a `moshi-ttt export` folder with Kyutai's own loader (moshi 0.2.13,
moshi.models.loaders.get_moshi_lm, as `python -m moshi.server` calls it through CheckpointInfo) and
compares its LMModel.forward logits with ours.

  check_export.py --export OUT --codes codes.safetensors --ours ours.safetensors [--base BASE] [--fuse 0|1]
  check_export.py --raw-lora CKPT/consolidated --base BASE     # the premise: Kyutai refuses TTT tensors

--codes holds `codes` [B, K, T] (int64); --ours our logits for them: `text_logits` [B, 1, T, text_card]
and `logits` [B, dep_q, T, card] (`moshi-ttt score --logits --out`). The export folder holds config.json
and either lora.safetensors (then --base names the base weights, as --moshi-weight does) or
consolidated.safetensors. Runs in float32 on the CPU. For a LoRA export it also checks that the file
holds adapters for exactly the linears Kyutai wraps (none left on meta, none unexpected).
Prints one JSON line: max absolute and relative differences for text and audio logits (relative: to the
largest of our logits), over the positions Kyutai's masks mark valid.
--raw-lora loads a training checkpoint's own lora.safetensors + config.json the same way and prints
{"refused": true, "error": ...} when Kyutai's loader raises (exit 0), {"refused": false} otherwise.
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


def load(args):
    export = Path(args.export)
    kwargs = lm_kwargs(export / "config.json")
    lora_file = export / "lora.safetensors"
    info = {}
    if lora_file.exists():
        assert kwargs.get("lora") is True, "a LoRA export's config.json must say lora: true"
        assert args.base, "--base is needed for a LoRA export"
        if not args.fuse:
            # Unfused, the LoRALinear modules stay: check the file covered every one of them.
            model = loaders.get_moshi_lm(args.base, lm_kwargs=kwargs, device="cpu", dtype=torch.float32,
                                         lora_weights=str(lora_file), fuse_lora=False)
            wrapped = wrapped_linears(model)
            keys = set(load_file(str(lora_file)).keys())
            want = {f"{n}.lora_{ab}.weight" for n in wrapped for ab in "AB"}
            assert keys == want, f"file vs Kyutai's wrapped linears: extra {sorted(keys - want)[:5]}, " \
                                 f"missing {sorted(want - keys)[:5]}"
            on_meta = [n for n, p in model.named_parameters() if p.is_meta]
            assert not on_meta, f"parameters left on meta: {on_meta[:5]}"
            info["wrapped_linears"] = len(wrapped)
        else:
            model = loaders.get_moshi_lm(args.base, lm_kwargs=kwargs, device="cpu", dtype=torch.float32,
                                         lora_weights=str(lora_file), fuse_lora=True)
            assert not wrapped_linears(model), "fused model still holds LoRALinear modules"
    else:
        assert kwargs.get("lora") is False, "a merged export's config.json must say lora: false"
        model = loaders.get_moshi_lm(str(export / "consolidated.safetensors"), lm_kwargs=kwargs, device="cpu",
                                     dtype=torch.float32)
    return model.eval(), info


def compare(ours, theirs, mask):
    ours, theirs = ours[mask], theirs[mask]
    diff = (ours.double() - theirs.double()).abs().max().item()
    return diff, diff / max(ours.abs().max().item(), 1e-12)


def raw_lora(args):
    ck = Path(args.raw_lora)
    try:
        loaders.get_moshi_lm(args.base, lm_kwargs=lm_kwargs(ck / "config.json"), device="cpu", dtype=torch.float32,
                             lora_weights=str(ck / "lora.safetensors"), fuse_lora=True)
        print(json.dumps({"refused": False}))
    except RuntimeError as e:
        print(json.dumps({"refused": True, "error": str(e)[:400]}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export")
    ap.add_argument("--codes")
    ap.add_argument("--ours")
    ap.add_argument("--raw-lora")
    ap.add_argument("--base")
    ap.add_argument("--fuse", type=int, default=1, help="fuse the adapters (moshi.server's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.raw_lora:
        return raw_lora(args)
    ours = load_file(args.ours)
    model, info = load(args)
    with torch.no_grad():
        out = model(load_file(args.codes)["codes"])
    text_mask = out.text_mask.unsqueeze(-1).expand_as(out.text_logits)
    audio_mask = out.mask.unsqueeze(-1).expand_as(out.logits)
    t_abs, t_rel = compare(ours["text_logits"], out.text_logits, text_mask)
    a_abs, a_rel = compare(ours["logits"], out.logits, audio_mask)
    result = dict(info, text_max_abs=t_abs, text_max_rel=t_rel, audio_max_abs=a_abs, audio_max_rel=a_rel,
                  fuse=bool(args.fuse), format="lora" if (Path(args.export) / "lora.safetensors").exists()
                  else "merged")
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
