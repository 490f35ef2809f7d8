#!/usr/bin/env bash
# Creates (idempotently) a venv with Kyutai's `moshi` Python package for timing the reference.
# It does not reinstall torch: a .pth file makes the cached torch venv that scripts/setup.sh
# builds visible to it (moshi pins torch<2.10, but runs on the cached torch 2.15; hence --no-deps).
#   scripts/reference/setup_reference_env.sh        # prints the venv's python path on the last line
# Environment:
#   MOSHI_TTT_CACHE            per-user cache (default ~/.cache/moshi-ttt)
#   MOSHI_TTT_TORCH_VERSION    torch venv to reuse (default 2.15.0)
#   MOSHI_REF_VERSION          moshi version (default 0.2.13)
set -euo pipefail
CACHE=${MOSHI_TTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moshi-ttt}
TORCH_VERSION=${MOSHI_TTT_TORCH_VERSION:-2.15.0}
MOSHI_VERSION=${MOSHI_REF_VERSION:-0.2.13}
TORCH_VENV="$CACHE/torch-$TORCH_VERSION/venv"
REFENV="$CACHE/refenv"
log() { printf '[refenv] %s\n' "$*" >&2; }

[ -x "$TORCH_VENV/bin/python" ] || { log "no torch venv at $TORCH_VENV: run scripts/setup.sh first"; exit 1; }
TORCH_SITE=$("$TORCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYVER=$("$TORCH_VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

ok() {
  "$REFENV/bin/python" - "$MOSHI_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
import torch, einops, safetensors, huggingface_hub, sentencepiece  # noqa: F401
from moshi.models.lm import LMModel, LMGen  # noqa: F401
assert md.version("moshi") == sys.argv[1]
PY
}

if [ -x "$REFENV/bin/python" ] && ok; then
  log "already set up"
else
  # The venv must use the same interpreter version as the torch venv for the .pth trick to work.
  BASE_PY=$("$TORCH_VENV/bin/python" -c 'import sys; print(sys._base_executable)')
  log "creating $REFENV (python $PYVER, torch from $TORCH_SITE)"
  rm -rf "$REFENV"
  "$BASE_PY" -m venv "$REFENV"
  REF_SITE=$("$REFENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Appended after the venv's own site-packages, so packages installed here take precedence.
  echo "$TORCH_SITE" > "$REF_SITE/zz_moshi_ttt_torch.pth"
  "$REFENV/bin/python" -c 'import torch; print("torch", torch.__version__)' >&2
  pip=("$REFENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --no-deps "moshi==$MOSHI_VERSION"
  "${pip[@]}" einops safetensors huggingface_hub sentencepiece
  ok || { log "moshi import failed in $REFENV"; "$REFENV/bin/python" -c 'from moshi.models.lm import LMModel'; exit 1; }
fi
"$REFENV/bin/python" -c 'import torch, moshi, sys; print("[refenv] torch", torch.__version__, "moshi", moshi.__version__, file=sys.stderr)'
echo "$REFENV/bin/python"
