#!/usr/bin/env bash
# Installs the Debian 12 packages tspm-edge needs to build, test and run its model build.
# apt can fail once when another apt run cleans its cache: retry.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES=(
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-tools
  python3-torch python3-venv python3-numpy python3-pil
  espeak-ng sox fluidsynth fluid-soundfont-gm
  systemd libasound2-dev libclang-dev
  python3-gi gir1.2-gst-rtsp-server-1.0  # the tests' RTSP server (tests/fixtures/rtsp_server.py)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi
echo "[deps] installing: ${missing[*]}"
for attempt in 1 2 3; do
  if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    exit 0
  fi
  echo "[deps] apt-get failed (attempt $attempt), retrying in 10 s"; sleep 10
done
exit 1
