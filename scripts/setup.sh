#!/usr/bin/env bash
# Idempotent setup of everything Earworm needs on a fresh Debian machine (Python 3.11):
#   Debian packages (FluidSynth, a General MIDI soundfont, espeak-ng, nginx-light: it spreads the calls
#   of `earworm serve` over its processes), the virtual environment
#   in .venv with the pinned dependencies of pyproject.toml, and the generated gRPC code.
#   scripts/setup.sh --with-browser also installs Chromium + chromedriver (for tests/serving/test_page.py).
# Fast when nothing changed: each step is skipped when its stamp is current.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fluidsynth libfluidsynth3 fluid-soundfont-gm espeak-ng nginx-light)
# --with-browser (the test path): Chromium and its WebDriver for the page's browser tests
if [[ "${1:-}" == "--with-browser" ]]; then
  APT_PACKAGES+=(chromium chromium-driver)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.earworm-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python dependencies (pinned in pyproject.toml)"
  .venv/bin/python -m pip install -q --upgrade pip "setuptools<81" wheel
  .venv/bin/python -m pip install -q -e ".[test,dev,spice]"
  echo "$want" > "$stamp"
fi

.venv/bin/python -m protos.build
echo "[setup] ready"
