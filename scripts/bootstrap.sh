#!/usr/bin/env bash
# Idempotent set-up, then run: `bash scripts/bootstrap.sh demo|test|setup`.
# Creates .venv, installs torch (TORCH_SPEC, default the CPU build torch==2.13.0; set e.g.
# TORCH_SPEC="torch==2.6.0" --index-url ... for a GPU build), the package, and Debian's Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

setup_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv >/dev/null \
        || { echo "error: python3 -m venv failed; run: sudo apt-get install python3-venv" >&2; exit 1; }
      "$PY" -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.installed"
  local want="$TORCH_SPEC $(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check $TORCH_SPEC
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

setup_data() {
  if [ -f "$FASHION" ] || [ -n "${SHARPSHIFT_DATA:-}" ]; then return; fi
  if as_root true; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "error: Fashion-MNIST is missing; run: sudo apt-get update && sudo apt-get install dataset-fashion-mnist" \
         "(or put the IDX files in a folder and set SHARPSHIFT_DATA to it)" >&2
    exit 1
  fi
}

setup_browser() {  # tests only: tests/test_report.py opens report.html in headless chromium
  command -v chromium >/dev/null && return
  if as_root true; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium missing (sudo apt-get install chromium); the report's browser test cannot run" >&2
  fi
}

setup_python
setup_data
case "${1:-setup}" in
  setup) ;;
  demo) exec "$VENV/bin/sharpshift" pretrain configs/default.yaml "${@:2}" ;;
  test) setup_browser; exec "$VENV/bin/pytest" -q "${@:2}" ;;
  *) echo "usage: bash scripts/bootstrap.sh setup|demo|test" >&2; exit 2 ;;
esac
