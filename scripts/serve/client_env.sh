#!/usr/bin/env bash
# Creates (idempotently) a small venv in which Kyutai's own client, `moshi/client.py` from PyPI
# moshi 0.2.13, can run headless through scripts/serve/kyutai_client.py. The venv has no torch and no
# PortAudio:
# - moshi is installed with --no-deps. The driver puts an empty stand-in for the `moshi` package in
#   sys.modules, so `import moshi.client` loads only client.py and client_utils.py and skips
#   moshi/__init__.py, which would import the model code (torch, ...).
# - client.py and client_utils.py import only the standard library plus aiohttp, numpy, sphn and
#   sounddevice. The driver supplies its own `sounddevice` stand-in, so those three are all we install.
#   aiohttp < 3.12 and numpy < 2.3 are moshi 0.2.13's own pins.
#   scripts/serve/client_env.sh        # prints the venv's python path on the last line
# Environment:
#   MOSHI_TTT_CACHE   per-user cache (default ~/.cache/moshi-ttt); the venv is $MOSHI_TTT_CACHE/clientenv
#   PYTHON            interpreter that creates the venv (default python3; Debian needs python3-venv)
set -euo pipefail
CACHE=${MOSHI_TTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moshi-ttt}
CLIENTENV="$CACHE/clientenv"
MOSHI_VERSION=0.2.13
SPHN_VERSION=0.2.1
log() { printf '[clientenv] %s\n' "$*" >&2; }

# Loads moshi.client the way the driver does and checks the pinned versions. A venv whose base
# interpreter has gone (or any failure) makes this false, and the venv is rebuilt.
ok() {
  "$CLIENTENV/bin/python" - "$MOSHI_VERSION" "$SPHN_VERSION" <<'PY' 2>/dev/null
import importlib.util, sys, types, importlib.metadata as md
spec = importlib.util.find_spec("moshi")
stub = types.ModuleType("moshi")
stub.__path__ = list(spec.submodule_search_locations)
sys.modules["moshi"] = stub
sys.modules["sounddevice"] = types.ModuleType("sounddevice")
import moshi.client  # noqa: F401
assert "torch" not in sys.modules
assert md.version("moshi") == sys.argv[1] and md.version("sphn") == sys.argv[2]
assert tuple(int(x) for x in md.version("aiohttp").split(".")[:2]) < (3, 12)
PY
}

if [ -x "$CLIENTENV/bin/python" ] && ok; then
  log "already set up"
else
  log "creating $CLIENTENV"
  start=$SECONDS
  rm -rf "$CLIENTENV"
  mkdir -p "$CACHE"
  "${PYTHON:-python3}" -m venv "$CLIENTENV"
  pip=("$CLIENTENV/bin/python" -m pip install -q --disable-pip-version-check)
  # The client's own dependencies first, within moshi's pins; moshi last, so pip does not list its
  # model dependencies as missing.
  "${pip[@]}" "sphn==$SPHN_VERSION" "aiohttp<3.12" "numpy<2.3"
  "${pip[@]}" --no-deps "moshi==$MOSHI_VERSION"
  ok || { log "moshi.client does not import in $CLIENTENV"; exit 1; }
  log "done in $((SECONDS - start)) s"
fi
"$CLIENTENV/bin/python" -c 'import sys, importlib.metadata as md
print("[clientenv] python", sys.version.split()[0], *(f"{p} {md.version(p)}" for p in ("moshi", "sphn", "aiohttp", "numpy")), file=sys.stderr)'
echo "$CLIENTENV/bin/python"
