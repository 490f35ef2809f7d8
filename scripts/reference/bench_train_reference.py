#!/usr/bin/env python3
"""Times one training step of Kyutai's moshi-finetune (github.com/kyutai-labs/moshi-finetune) on
Kyutai's reference LM (moshi.models.lm.LMModel, PyPI moshi==0.2.13), so moshi-ttt's C++ training
figures have a side-by-side reference.

The step is the single-process path of moshi-finetune's train.py (no FSDP with one process):
    optimizer.zero_grad()
    output = model(codes=codes)
    text_loss  = compute_loss_with_mask(output.text_logits, codes[:, :audio_offset], output.text_mask,
                                        mode="text", text_padding_weight=..., text_padding_ids={pad, end_pad})
    audio_loss = compute_loss_with_mask(output.logits, codes[:, audio_offset:audio_offset + dep_q],
                                        output.mask, mode="audio", first_codebook_weight_multiplier=...)
    (text_loss + audio_loss).backward()
    n_real_tokens = text_mask.sum().item() + mask.sum().item()      # train.py counts them every step
    upcast_mixed_precision(); clip_grad_norm_(params, max_norm); optimizer.step()
    downcast_mixed_precision(); scheduler.step(); loss.item()
with AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1) and OneCycleLR(pct_start=0.05) as in
train.py, after prepare_mixed_precision(param_dtype, optim_dtype=float32). compute_loss_with_mask and
the three mixed-precision functions are imported from the moshi-finetune checkout named by
--moshi-finetune: a work tree (PATH/finetune/loss.py exists, imported through sys.path) or a bare git
directory (finetune/loss.py and finetune/mixed_precision.py are written out of HEAD into a temporary
directory and imported from there; both only need torch). The commit used is recorded in the JSON.

Models (--model): small (the LM of bench_lm_reference.py), tiny (a few layers of width 64, for quick
checks) and moshiko-7b (moshi.models.loaders._lm_kwargs, random weights; meant for a GPU). Weights are
a seeded random init. --mode full trains every parameter; --mode lora builds the model the way
moshi's loader does (get_moshi_lm with lora=True, which swaps every nn.Linear for a LoRALinear),
initialises LoRA A with kaiming-uniform(a=sqrt(5)) and B with zeros as moshi-finetune does, and
trains only the parameters whose name contains "lora".

Measures
  train:   wall time per step (median / min over --steps after --warmup steps; first step separately,
           it carries torch.compile's compile time), tokens_per_s = B*T / median (time frames x batch,
           moshi-finetune's basis), the timed losses, trainable / total parameters, peak memory
           (cuda: torch.cuda.max_memory_allocated; cpu: ru_maxrss).
  forward: model(codes) under torch.no_grad() (model left in train mode, as in the step), median over
           --steps after --warmup runs.

torch.compile: moshi decorates a few functions with torch.compile unless NO_TORCH_COMPILE is set
when it is imported. --compile on|off picks one in this process; --compile both (the default unless
NO_TORCH_COMPILE is set in the environment, which means off) runs this script twice in subprocesses
(with and without NO_TORCH_COMPILE=1) and prints {"off": ..., "on": ...}. With --compile on,
--compile-model additionally wraps the whole LMModel in torch.compile(model).

Run with the venv from setup_reference_env.sh:
  PY=$(scripts/reference/setup_reference_env.sh | tail -1)
  $PY scripts/reference/bench_train_reference.py --moshi-finetune /path/to/moshi-finetune \
      --model tiny --mode full --T 64 --B 2 --compile off --steps 3 --warmup 1
"""
import argparse
import atexit
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def small_kwargs():
    """bench_lm_reference.py's small LM (Kyutai's moshi-7B layout scaled down), from that script."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_lm_reference
    return bench_lm_reference.lm_kwargs(argparse.Namespace(depformer_num_heads=4))


def tiny_kwargs():
    """A toy of the same layout: 2 layers of width 64, 4 audio codebooks of which 2 are predicted."""
    kw = small_kwargs()
    dep_dim, dep_q = 32, 2
    kw.update({
        "dim": 64,
        "num_heads": 4,
        "num_layers": 2,
        "text_card": 64,
        "card": 64,
        "n_q": 4,
        "dep_q": dep_q,
        "delays": [0, 0, 1, 0, 1],
        "context": 32,
        "hidden_scale": 4.125,
        "depformer_dim": dep_dim,
        "depformer_dim_feedforward": int(4.125 * dep_dim),
        "depformer_num_heads": 2,
        "depformer_num_layers": 1,
        "depformer_context": dep_q,
    })
    return kw


def lm_kwargs(name):
    if name == "small":
        return small_kwargs()
    if name == "tiny":
        return tiny_kwargs()
    from moshi.models import loaders
    return dict(loaders._lm_kwargs)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moshi-finetune", required=True, metavar="PATH",
                   help="moshi-finetune checkout: a work tree or a bare git directory")
    p.add_argument("--model", choices=["tiny", "small", "moshiko-7b"], default="small")
    p.add_argument("--mode", choices=["full", "lora"], default="full")
    p.add_argument("--lora-rank", type=int, default=128)
    p.add_argument("--lora-scaling", type=float, default=2.0)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="pass gradient_checkpointing=True to LMModel (moshi-finetune's default is on)")
    p.add_argument("--T", type=int, default=256, help="time frames per sequence")
    p.add_argument("--B", type=int, default=1, help="batch size")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (and forward runs)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (and forward runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--param-dtype", choices=["float32", "bfloat16"], default=None,
                   help="default: float32 on cpu, bfloat16 on cuda (moshi-finetune's default)")
    p.add_argument("--compile", choices=["on", "off", "both"], default=None,
                   help="moshi's torch.compile decorators on, off, or both in subprocesses "
                        "(default: off if NO_TORCH_COMPILE is set, else both)")
    p.add_argument("--compile-model", action="store_true",
                   help="with --compile on: also wrap the LMModel in torch.compile(model) "
                        "(the first two steps compile; keep --warmup >= 2)")
    p.add_argument("--lr", type=float, default=2e-6)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--pct-start", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=2000,
                   help="OneCycleLR total_steps (raised to warmup+steps if smaller)")
    p.add_argument("--max-norm", type=float, default=1.0)
    p.add_argument("--first-codebook-weight-multiplier", type=float, default=100.0)
    p.add_argument("--text-padding-weight", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", help="also write the JSON line to this file")
    return p.parse_args()


def log(msg):
    print(f"[train-ref] {msg}", file=sys.stderr, flush=True)


def emit(obj, out):
    line = json.dumps(obj, sort_keys=False)
    print(line, flush=True)
    if out:
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        with open(out, "w") as f:
            f.write(line + "\n")


def child_argv(mode):
    """This process's command line with --compile set to `mode`; --out is dropped (the parent writes it)
    and so is --compile-model for the 'off' run."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--compile", "--out"):
            skip = True
            continue
        if a.startswith("--compile=") or a.startswith("--out="):
            continue
        if a == "--compile-model" and mode == "off":
            continue
        argv.append(a)
    return [sys.executable, os.path.abspath(__file__)] + argv + ["--compile", mode]


def run_both(args):
    results = {}
    for mode in ["off", "on"]:
        log(f"running with torch.compile {mode}")
        r = subprocess.run(child_argv(mode), stdout=subprocess.PIPE, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode != 0 or not lines:
            results[mode] = {"error": f"exit code {r.returncode}"}
        else:
            results[mode] = json.loads(lines[-1])
    emit(results, args.out)


# ---------------------------------------------------------------------------------------------
# moshi-finetune code


def git_head(path):
    """Commit of the checkout: `git -C` for a work tree, `git --git-dir` for a bare directory."""
    for cmd in (["git", "-C", path, "rev-parse", "HEAD"], ["git", "--git-dir", path, "rev-parse", "HEAD"]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return None


def import_moshi_finetune(path):
    """Returns (compute_loss_with_mask, prepare, upcast, downcast, info) from moshi-finetune at `path`."""
    path = os.path.abspath(path)
    info = {"path": path, "commit": git_head(path)}
    if os.path.isfile(os.path.join(path, "finetune", "loss.py")):
        root = path
        info["source"] = "work tree"
    else:
        root = tempfile.mkdtemp(prefix="moshi_finetune_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        pkg = os.path.join(root, "finetune")
        os.makedirs(pkg)
        with open(os.path.join(pkg, "__init__.py"), "w"):
            pass
        for name in ("loss.py", "mixed_precision.py"):
            r = subprocess.run(["git", "--git-dir", path, "show", f"HEAD:finetune/{name}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                sys.exit(f"[train-ref] cannot read finetune/{name} from {path}: {r.stderr.strip()}")
            with open(os.path.join(pkg, name), "w") as f:
                f.write(r.stdout)
        info["source"] = "git HEAD"
    sys.path.insert(0, root)
    from finetune.loss import compute_loss_with_mask
    from finetune.mixed_precision import (prepare_mixed_precision, upcast_mixed_precision,
                                          downcast_mixed_precision)
    import finetune.loss
    log(f"moshi-finetune {info['commit']} ({info['source']}: {os.path.dirname(finetune.loss.__file__)})")
    return compute_loss_with_mask, prepare_mixed_precision, upcast_mixed_precision, downcast_mixed_precision, info


# ---------------------------------------------------------------------------------------------


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(args):
    if args.compile == "off":
        if args.compile_model:
            sys.exit("[train-ref] --compile-model needs --compile on")
        os.environ["NO_TORCH_COMPILE"] = "1"
    else:
        os.environ.pop("NO_TORCH_COMPILE", None)
    os.environ.setdefault("NO_CUDA_GRAPH", "1")

    import torch  # noqa: E402  (after the env is set: moshi reads it at import)
    import importlib.metadata as md
    from moshi.models.loaders import get_moshi_lm

    (compute_loss_with_mask, prepare_mixed_precision, upcast_mixed_precision,
     downcast_mixed_precision, mf_info) = import_moshi_finetune(args.moshi_finetune)

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("[train-ref] --device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.param_dtype is None:
        args.param_dtype = "bfloat16" if cuda else "float32"
    param_dtype = getattr(torch, args.param_dtype)
    optim_dtype = torch.float32
    torch.set_num_threads(args.threads)

    result = {"what": "moshi-finetune training step on kyutai moshi LMModel (reference)"}
    env = {"torch": torch.__version__, "moshi": md.version("moshi"),
           "moshi_finetune_commit": mf_info["commit"], "moshi_finetune_source": mf_info["source"],
           "threads": torch.get_num_threads(), "device": args.device, "python": sys.version.split()[0],
           "seed": args.seed}
    if cuda:
        env["gpu"] = torch.cuda.get_device_name(device)
    # Other processes skew 2-thread CPU timings badly: the load average is kept with the figures.
    env["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    rss_start = maxrss_mb()

    # -- model, built as moshi's loader does (get_moshi_lm: pops the lora kwargs, builds LMModel,
    #    then replace_all_linear_with_lora), directly in param_dtype as moshi-finetune does.
    kwargs = lm_kwargs(args.model)
    overrides = {"gradient_checkpointing": args.gradient_checkpointing}
    if args.mode == "lora":
        overrides.update({"lora": True, "lora_rank": args.lora_rank, "lora_scaling": args.lora_scaling})
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = get_moshi_lm(None, lm_kwargs=kwargs, device=device, dtype=param_dtype,
                         lm_kwargs_overrides=overrides)
    if args.mode == "lora":
        # moshi-finetune's initialize_lora_parameters: A kaiming-uniform(a=sqrt(5)), B zeros.
        n_lora = 0
        with torch.no_grad():
            for m_name, module in model.named_modules():
                last = m_name.split(".")[-1]
                if last == "lora_A":
                    torch.nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                    n_lora += 1
                elif last == "lora_B":
                    torch.nn.init.zeros_(module.weight)
        for name, p in model.named_parameters():
            p.requires_grad = "lora" in name
        log(f"lora: {n_lora} LoRALinear layers, rank {args.lora_rank}, scaling {args.lora_scaling}")
    else:
        for p in model.parameters():
            p.requires_grad = True
    n_params = sum(p.numel() for p in model.parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for _, p in trainable)
    if args.mode == "lora":
        assert all("lora" in n for n, _ in trainable), "non-LoRA parameter left trainable"
    log(f"model {args.model} mode={args.mode} built in {time.perf_counter() - t0:.1f}s: "
        f"{n_params / 1e6:.2f}M params, {n_train / 1e6:.3f}M trainable, dtype={args.param_dtype}, "
        f"device={args.device}, compile={args.compile}{' +model' if args.compile_model else ''}, "
        f"threads={torch.get_num_threads()}")

    # -- optimizer and schedule as train.py (all parameters handed over; AdamW skips those without grad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-08,
                                  weight_decay=args.weight_decay)
    total_steps = max(args.max_steps, args.warmup + args.steps + 1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                    pct_start=args.pct_start)
    prepare_mixed_precision(model.parameters(), param_dtype=param_dtype, optim_dtype=optim_dtype)
    model.train()
    if cuda:
        torch.cuda.empty_cache()
    fmodel = torch.compile(model) if args.compile_model else model
    if args.compile_model and args.warmup < 2:
        # The second call recompiles once (moshi's lazy torch.compile wrappers change state after
        # their first call, which the whole-model graph guards on).
        log("note: with --compile-model the second step recompiles too; use --warmup >= 2")
    rss_built = maxrss_mb()

    # -- data: text stream in [0, text_card), audio streams in [0, card)
    g = torch.Generator().manual_seed(args.seed + 1)
    K = model.num_codebooks
    codes = torch.cat([torch.randint(0, model.text_card, (args.B, 1, args.T), generator=g),
                       torch.randint(0, model.card, (args.B, K - 1, args.T), generator=g)], dim=1).to(device)
    text_padding_ids = {model.text_padding_token_id, model.end_of_text_padding_id}
    ao, dep_q = model.audio_offset, model.dep_q

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train_step():
        optimizer.zero_grad()
        loss = torch.tensor([0.0], device=device)
        output = fmodel(codes=codes)
        text_loss = compute_loss_with_mask(
            output.text_logits, codes[:, :ao], output.text_mask, mode="text",
            text_padding_weight=args.text_padding_weight, text_padding_ids=text_padding_ids)
        audio_loss = compute_loss_with_mask(
            output.logits, codes[:, ao:ao + dep_q], output.mask, mode="audio",
            first_codebook_weight_multiplier=args.first_codebook_weight_multiplier)
        mb_loss = text_loss + audio_loss
        mb_loss.backward()
        loss += mb_loss.detach()
        n_real = torch.sum(output.text_mask).item() + torch.sum(output.mask).item()
        upcast_mixed_precision(model.parameters(), optim_dtype=optim_dtype)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
        optimizer.step()
        downcast_mixed_precision(model.parameters(), param_dtype=param_dtype)
        scheduler.step()
        loss_item = loss.item()
        return loss_item, text_loss.detach(), audio_loss.detach(), n_real

    times, losses, parts = [], [], []
    first_ms = None
    n_real = None
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        loss_item, tl, al, n_real = train_step()
        sync()
        dt = time.perf_counter() - t0
        if i == 0:
            first_ms = dt * 1e3
        tag = "warmup" if i < args.warmup else "step"
        log(f"{tag} {i}: {dt * 1e3:.1f} ms, loss {loss_item:.4f}")
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss_item)
            parts.append((tl, al))
    med = statistics.median(times)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else maxrss_mb()
    finite = all(math.isfinite(x) for x in losses)
    if not finite:
        log("WARNING: non-finite loss in the timed steps")
    train = {
        "steps": args.steps, "warmup": args.warmup,
        "median_ms": med * 1e3, "min_ms": min(times) * 1e3, "first_step_ms": first_ms,
        "tokens_per_s": args.B * args.T / med,
        "losses": losses, "losses_finite": finite,
        "text_losses": [float(t) for t, _ in parts], "audio_losses": [float(a) for _, a in parts],
        "n_real_tokens": n_real,
        "peak_mb": peak_mb,
        "trainable_params": n_train, "params": n_params,
        "lr_last": scheduler.get_last_lr()[0],
    }
    if not cuda:
        train["rss_mb"] = {"after_imports": rss_start, "after_build": rss_built, "after_train": peak_mb}
    log(f"train B={args.B} T={args.T}: {med * 1e3:.1f} ms/step median, {args.B * args.T / med:.1f} tok/s")

    # -- forward only, no grad (train mode kept, so a compiled model is not recompiled)
    optimizer.zero_grad(set_to_none=True)
    ftimes = []
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            out = fmodel(codes)
            sync()
            dt = time.perf_counter() - t0
            del out
            if i >= args.warmup:
                ftimes.append(dt)
    fmed = statistics.median(ftimes)
    forward = {"median_ms": fmed * 1e3, "min_ms": min(ftimes) * 1e3, "tokens_per_s": args.B * args.T / fmed}
    log(f"forward (no_grad): {fmed * 1e3:.1f} ms median, {args.B * args.T / fmed:.1f} tok/s")

    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    config = dict(kwargs)
    config.update(overrides)
    config.update({"model": args.model, "mode": args.mode, "B": args.B, "T": args.T,
                   "param_dtype": args.param_dtype, "optim_dtype": "float32",
                   "lr": args.lr, "weight_decay": args.weight_decay, "pct_start": args.pct_start,
                   "total_steps": total_steps, "max_norm": args.max_norm,
                   "first_codebook_weight_multiplier": args.first_codebook_weight_multiplier,
                   "text_padding_weight": args.text_padding_weight})
    result.update({
        "config": config, "env": env,
        "torch_compile": args.compile == "on", "compile_model": bool(args.compile_model),
        "train": train, "forward": forward,
    })
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
