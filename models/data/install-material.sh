#!/usr/bin/env bash
# Installs the Debian 12 packages the scene synthesiser (models/data/synth.py) reads its
# material from, plus the tools it runs. Every package here is listed, with its licence, in
# models/data/DATA_CARD.md. apt can fail once when another apt run holds the lock or cleans
# its cache: retry.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES=(
  # tools
  fluidsynth sox espeak-ng librsvg2-bin gstreamer1.0-tools gstreamer1.0-plugins-base-apps
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-numpy python3-pil
  # sound material: General MIDI soundfonts and real recordings
  fluid-soundfont-gm musescore-general-soundfont-small timgm6mb-soundfont
  sonic-pi-samples csound-soundfont
  # pictures (gcompris-qt-data and tuxpaint-stamps-default also hold recordings)
  gcompris-qt-data tuxpaint-stamps-default openclipart-svg fonts-noto-color-emoji
  ruby-gemojione libjs-emojify
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[material] all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi
echo "[material] installing: ${missing[*]}"
for attempt in 1 2 3 4 5; do
  if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
         && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }; then
    exit 0
  fi
  echo "[material] apt-get failed (attempt $attempt), retrying in 15 s"; sleep 15
done
exit 1
