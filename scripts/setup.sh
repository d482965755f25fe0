#!/usr/bin/env bash
# Set up everything aquamask needs on a fresh Debian 12 machine: MapServer, a Python 3.11 venv
# with the CPU build of PyTorch first (a plain `torch` may pull a multi-GB CUDA build), the
# package itself and, with --test, the test tools and a browser. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

APT_PACKAGES=(cgi-mapserver mapserver-bin)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.aquamask-setup
want="$(sha256sum pyproject.toml | cut -c1-16)-$WITH_TEST"
if [[ ! -f $stamp ]] || ! grep -qx "$want" "$stamp" 2>/dev/null; then
  .venv/bin/python -c "import torch" 2>/dev/null || {
    echo "setup: installing torch (CPU build where this machine has one)"
    "${PIP[@]}" install "torch==${AQUAMASK_TORCH_VERSION:-2.13.0}" || "${PIP[@]}" install "torch>=2.3,<2.15"
  }
  extra=""; ((WITH_TEST)) && extra="[test]"
  echo "setup: installing aquamask$extra"
  "${PIP[@]}" install -e ".$extra"
  echo "$want" > "$stamp"
fi

# --- viewer (/viewer page) -------------------------------------------------------------------
# Node/npm (Debian's when missing), `npm ci` of server/viewer when its lock file changed, and the
# esbuild build into server/viewer/static when a source changed; with --test, Debian's chromium
# for the browser tests (Playwright drives it; no browser download). Fast on a second run.
VIEWER=server/viewer
apt_install() {
  local SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing $* (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
command -v npm >/dev/null || apt_install nodejs npm
lock_sum="$(sha256sum "$VIEWER/package-lock.json" | cut -c1-16)"
if [[ ! -f $VIEWER/node_modules/.aquamask-lock ]] \
    || [[ "$(cat "$VIEWER/node_modules/.aquamask-lock")" != "$lock_sum" ]]; then
  echo "setup: npm ci (viewer)"
  (cd "$VIEWER" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$VIEWER/node_modules/.aquamask-lock"
fi
build_sum="$(cat "$VIEWER/package-lock.json" "$VIEWER/build.mjs" "$VIEWER"/src/* "$VIEWER"/pygeoapi/* \
  | sha256sum | cut -c1-16)"
if [[ ! -f $VIEWER/static/.aquamask-build ]] \
    || [[ "$(cat "$VIEWER/static/.aquamask-build")" != "$build_sum" ]]; then
  echo "setup: building the viewer"
  (cd "$VIEWER" && npm run --silent build)
  echo "$build_sum" > "$VIEWER/static/.aquamask-build"
fi
if ((WITH_TEST)) && [[ ! -x /usr/bin/chromium ]]; then
  apt_install chromium
fi

# --- PostgreSQL for the tests -----------------------------------------------------------------
# With --test, Debian's server binaries: tests/support/postgres.py starts a throwaway cluster from
# /usr/lib/postgresql/<version>/bin (the job store on PostgreSQL, several workers writing).
if ((WITH_TEST)) && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  apt_install postgresql
fi
