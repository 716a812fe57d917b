#!/usr/bin/env bash
# Installs everything the demo and the tests need into .venv (and Prometheus, wrk and Chromium via apt
# when root).
# Safe to run repeatedly: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# torch first, pinned to the CPU wheel on local disk; an unpinned torch pulls GBs of CUDA builds.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "==> installing torch 2.13.0 (CPU)"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "==> installing policy-rollouts[dev,train] (editable)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,train]'
  touch "$stamp"
fi

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v wrk >/dev/null || need_apt+=(wrk)
# Chromium renders the demo's report in tests/lab/test_demo_report.py, as a user sees it.
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "WARNING: ${need_apt[*]} missing and not root: install them (Debian: apt-get install prometheus wrk chromium);" \
      "tests that need them will fail." >&2
  fi
fi
