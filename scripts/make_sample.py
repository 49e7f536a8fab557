#!/usr/bin/env python3
"""Generate the bundled demo clip from real material in Debian packages.

    /usr/bin/python3 scripts/make_sample.py OUT.webm [--cache DIR]

12 seconds, VP8 video + Vorbis audio (GStreamer plugins-good/base only):
  0-4 s   photo "coffee" (python3-skimage)     + espeak-ng speech
  4-8 s   photo "chelsea" (a cat)              + a violin phrase (fluidsynth, FluidR3 GM)
  8-12 s  photo "astronaut"                    + a piano phrase (fluidsynth, FluidR3 GM)
Deterministic: fixed text, fixed notes, sox without dither. Needs espeak-ng, sox, fluidsynth,
fluid-soundfont-gm, python3-pil, gstreamer1.0-plugins-good and apt-get (to download python3-skimage's
photos into the cache, no root needed).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))
from PIL import Image, ImageOps  # noqa: E402  (Debian python3-pil)
from realdata import deb_extract, write_midi  # noqa: E402

SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SOX = ["sox", "-R", "-D"]
PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png"]


def run(cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def instrument(tmp, name, program, pitches):
    mid = os.path.join(tmp, f"{name}.mid")
    notes = [(i * 0.5, 0.45, p, 100) for i, p in enumerate(pitches)]
    write_midi(mid, program, notes)
    raw = os.path.join(tmp, f"{name}.raw.wav")
    run(["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", "44100", "-F", raw, SF2, mid],
        stdout=subprocess.DEVNULL)
    out = os.path.join(tmp, f"{name}.wav")
    run(SOX + [raw, "-r", "44100", "-c", "2", "-b", "16", out, "pad", "0", "4", "trim", "0", "4"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tspm-edge/sample"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    root = deb_extract(args.cache, "python3-skimage")
    data = os.path.join(root, "usr/lib/python3/dist-packages/skimage/data")
    with tempfile.TemporaryDirectory() as tmp:
        speech_raw = os.path.join(tmp, "speech.raw.wav")
        run(["espeak-ng", "-v", "en", "-s", "150", "-w", speech_raw,
             "Good evening. Tonight the violin plays first, and then the piano."])
        speech = os.path.join(tmp, "speech.wav")
        run(SOX + [speech_raw, "-r", "44100", "-c", "2", "-b", "16", speech, "pad", "0", "4",
                   "trim", "0", "4"])
        violin = instrument(tmp, "violin", 40, [67, 69, 71, 72, 74, 72, 71, 69])
        piano = instrument(tmp, "piano", 0, [60, 64, 67, 72, 67, 64, 60, 55])
        audio = os.path.join(tmp, "audio.wav")
        run(SOX + [speech, violin, piano, audio])
        # Three 4-second stills at 10 fps, concatenated by multifilesrc from numbered PNGs.
        frames = os.path.join(tmp, "frames")
        os.makedirs(frames)
        n = 0
        for photo in PHOTOS:
            # Same size and aspect for every frame: the muxer refuses caps changes.
            still = os.path.join(tmp, photo)
            ImageOps.fit(Image.open(os.path.join(data, photo)).convert("RGB"), (640, 480)).save(still)
            for _ in range(40):
                shutil.copy(still, os.path.join(frames, f"f{n:04d}.png"))
                n += 1
        tmp_out = args.out + ".part"
        run(["gst-launch-1.0", "-q",
             "multifilesrc", f"location={frames}/f%04d.png", "index=0", f"stop-index={n - 1}",
             "caps=image/png,framerate=10/1", "!", "pngdec", "!", "videoconvert", "!",
             "vp8enc", "deadline=1", "target-bitrate=800000", "!", "queue", "!", "mux.",
             "filesrc", f"location={audio}", "!", "wavparse", "!", "audioconvert", "!",
             "vorbisenc", "!", "queue", "!", "mux.",
             "webmmux", "name=mux", "!", "filesink", f"location={tmp_out}"])
        os.replace(tmp_out, args.out)
    print(f"sample written: {args.out} (12 s: speech, violin, piano over three photos)")


if __name__ == "__main__":
    main()
