#!/usr/bin/python3
"""Scene synthesiser: MUSIC-AVQA-style clips from real Debian material, with ground truth.

    /usr/bin/python3 models/data/synth.py --out DIR --split train|val|test [--count N]
        [--min-s 10] [--max-s 60] [--seed 7] [--start 0] [--cache DIR] [--fps 4] [--augment]

Writes, per clip, `DIR/<split>-NNNNN.webm` (VP8 448x448 video + Vorbis 16 kHz mono audio, one
stream each; GStreamer's decodebin reads it, so `tspm-edge extract` does) and
`DIR/<split>-NNNNN.json`, the ground truth (see `DATA_CARD.md` § ground truth).

A scene: a procedural indoor or outdoor background; 1-3 instruments that sound, placed left /
middle / right; sometimes a visible instrument that never sounds, an instrument that sounds
but is not in the picture, a second instrument of the same type, and an espeak-ng voice-over.
Each sounding instrument plays in known time spans at a known loudness (measured on its own
stem after mixing gains) with a measured onset rate ("rhythm"). Sounding instruments move in
the picture with their loudness envelope; silent ones stand still.

**Determinism:** clip i of split s is drawn from `numpy.random.default_rng([seed, split
index, i])`, so a clip does not depend on how many others are rendered or in what order;
`--start` renders a later range (for parallel or resumed runs). fluidsynth, sox and espeak-ng
run without random dither or reverb; the encoders are deterministic.

**--augment** (training split only): every sounding stem goes through a random smooth
equaliser and every picture through random colour, contrast, outline and shape changes,
drawn from a second generator `default_rng([seed, split index, i, AUG_STREAM])`, so the
scene itself (instruments, spans, places, levels) is the one the clip has without it. The
training material has only 1-5 pictures and a few sound sources per instrument; the test
split's are others (`material.py`), and the head learns the look and timbre of the training
ones (models/head/README.md).

Material and split: `material.py` (train and test never share a picture, a recording, a
soundfont or a voice). Needs the packages of `install-material.sh`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import material as M  # noqa: E402

SR = M.SR
FRAME_PX = 448  # square: the visual encoder centre-crops, so a wide frame would lose the sides
INSTRUMENTS = ["accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello", "clarinet",
               "congas", "drum", "electric_bass", "erhu", "flute", "guzheng", "piano", "pipa",
               "saxophone", "suona", "trumpet", "tuba", "ukulele", "violin", "xylophone"]
POSITIONS = ["left", "middle", "right"]
SLOT_X = {"left": 1 / 6, "middle": 1 / 2, "right": 5 / 6}
GT_VERSION = 1
AUG_STREAM = 99  # the last word of the augmentation generator's seed (see --augment)


def log(msg):
    print(f"[synth] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- scene sampling

def r1(x):
    return round(float(x), 1)


def sample_spans(rng, dur, onset=None):
    """Sounding spans [[start, end], ...] (seconds, 0.1 s grid) of one instrument."""
    min_len = 3.0
    if onset is not None:  # staggered entry: from `onset`, to the end or leaving early
        end = dur if rng.random() < 0.7 else rng.uniform(min(dur, onset + min_len), dur)
        return [[r1(onset), r1(max(end, onset + min_len))]]
    kind = rng.choice(["full", "enter", "exit", "middle", "gap"], p=[0.35, 0.2, 0.15, 0.1, 0.2])
    if kind == "gap" and dur < 3 * min_len + 4.0:  # too short for two spans and a gap
        kind = "enter"
    if kind == "full":
        return [[0.0, r1(dur)]]
    if kind == "enter":
        return [[r1(rng.uniform(1.0, 0.6 * dur)), r1(dur)]]
    if kind == "exit":
        return [[0.0, r1(rng.uniform(0.4 * dur, dur - 1.0))]]
    if kind == "middle":
        a = rng.uniform(1.0, dur - min_len - 1.0)
        b = rng.uniform(a + min_len, dur - 0.5)
        return [[r1(a), r1(b)]]
    a = rng.uniform(min_len, dur - 2 * min_len - 2.0)
    b = rng.uniform(a + 2.0, dur - min_len)
    return [[0.0, r1(a)], [r1(b), r1(dur)]]


def sample_scene(rng, split, clip_id, dur):
    """The scene description (before rendering): objects, spans, levels, sources."""
    with_pic = [i for i in INSTRUMENTS if M.pictures(i, split)]
    n_play = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    n_silent = int(n_play < 3 and rng.random() < 0.35)
    n_hidden = int(rng.random() < 0.3)
    types = list(rng.choice(with_pic, size=n_play + n_silent, replace=False))
    if n_play >= 2 and rng.random() < 0.25:  # two of the same instrument
        types[1] = types[0]
    visible = [{"instrument": str(t), "visible": True, "audible": k < n_play}
               for k, t in enumerate(types)]
    slots = {1: [str(rng.choice(POSITIONS, p=[0.25, 0.5, 0.25]))],
             2: sorted(rng.choice(POSITIONS, size=2, replace=False), key=POSITIONS.index),
             3: POSITIONS}[len(visible)]
    for obj, pos in zip(visible, rng.permutation(slots)):
        obj["position"] = str(pos)
    visible.sort(key=lambda o: POSITIONS.index(o["position"]))
    objects = visible
    if n_hidden:
        pool = [i for i in INSTRUMENTS if i not in types]
        only = [i for i in M.AUDIO_ONLY if i in pool]
        inst = str(rng.choice(only if rng.random() < 0.5 else pool))
        objects.append({"instrument": inst, "visible": False, "position": None, "audible": True})

    audible = [o for o in objects if o["audible"]]
    staggered = len(audible) >= 2 and rng.random() < 0.45
    if staggered:
        order = rng.permutation(len(audible))
        gap = rng.uniform(2.0, max(2.5, 0.6 * dur / len(audible)))
        for rank, k in enumerate(order):
            onset = 0.0 if rank == 0 else min(dur - 3.0, rank * gap + rng.uniform(-0.3, 0.3))
            audible[k]["spans"] = sample_spans(rng, dur, onset)
    else:
        for o in audible:
            o["spans"] = sample_spans(rng, dur)
    # A duplicate often starts with its twin ("simultaneously").
    twins = [o for o in audible if sum(p["instrument"] == o["instrument"] for p in audible) > 1]
    if len(twins) == 2 and rng.random() < 0.5:
        twins[1]["spans"] = [list(s) for s in twins[0]["spans"]]
    for o in objects:
        if not o["audible"]:
            o["spans"] = []
        else:
            o["level_db"] = r1(rng.uniform(-34.0, -14.0))  # target RMS over its spans, dBFS
            srcs = M.sound_sources(o["instrument"], split)
            recs = [s for s in srcs if s[0] in ("rec", "hits")]
            synth = [s for s in srcs if s[0] not in ("rec", "hits")]
            pick = recs if recs and (not synth or rng.random() < 0.35) else synth
            o["source"] = pick[int(rng.integers(len(pick)))]
            o["tempo_bpm"] = r1(rng.uniform(66, 160))
            o["density"] = float(rng.choice([0.5, 1.0, 2.0, 4.0], p=[0.2, 0.35, 0.3, 0.15]))
    pics = {}
    for o in objects:
        if o["visible"]:
            cand = M.pictures(o["instrument"], split)
            o["picture"] = cand[int(rng.integers(len(cand)))]
            pics[o["instrument"]] = o["picture"]
    voice = None
    if rng.random() < 0.3:
        mat = M.material_split(split)
        voice = {"voice": str(rng.choice(M.VOICES[mat])),
                 "text": str(rng.choice(M.SENTENCES[mat])),
                 "start_s": r1(rng.uniform(0.0, max(0.5, dur - 6.0))),
                 "level_db": r1(rng.uniform(-26.0, -16.0))}
    return {"clip_id": clip_id, "split": split, "duration_s": float(dur),
            "place": str(rng.choice(["indoor", "outdoor"])), "objects": objects,
            "voiceover": voice}


# ---------------------------------------------------------------- audio

def phrase_events(rng, obj, style, lo, hi, dur):
    """MIDI events (time_s, kind, data) filling the object's spans."""
    beat = 60.0 / obj["tempo_bpm"]
    step = beat / obj["density"]
    vel0 = int(rng.integers(60, 116))
    ev = []
    pitch = int(rng.integers(lo, hi + 1))
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    for a, b in obj["spans"]:
        t = a
        while t < b - 0.05:
            if rng.random() < 0.1:  # a rest
                t += step
                continue
            pitch = int(np.clip(pitch + rng.choice([-4, -2, -1, 0, 1, 2, 3, 5]), lo, hi))
            pitch = int(12 * (pitch // 12) + scale[np.abs(scale - pitch % 12).argmin()])
            vel = int(np.clip(vel0 + rng.integers(-12, 13), 30, 127))
            n = step * (2 if style in ("legato", "slide") and rng.random() < 0.3 else 1)
            d = min(n * (0.55 if style == "pluck" else 0.95), b - t)
            if style in ("chords", "strum"):
                for k, iv in enumerate([0, 4, 7] if rng.random() < 0.6 else [0, 3, 7, 12]):
                    off = 0.02 * k if style == "strum" else 0.0
                    ev.append((t + off, "on", (min(127, pitch + iv), vel, max(0.05, d - off))))
            elif style == "tremolo":
                k = 0
                while k * 0.08 < d:
                    ev.append((t + k * 0.08, "on", (pitch, vel, 0.07)))
                    k += 1
            elif style == "gliss" and rng.random() < 0.25:
                for k in range(6):
                    p = int(np.clip(pitch + 2 * k, lo, hi))
                    ev.append((t + k * 0.06, "on", (p, vel, max(0.1, d - k * 0.06))))
            else:
                if style == "slide" and rng.random() < 0.5:
                    ev.append((t, "bend", 8192 - 4096))
                    ev.append((t + 0.12, "bend", 8192))
                ev.append((t, "on", (pitch, vel, max(0.05, d))))
            t += n
    return ev


def drum_events(rng, obj, kind):
    beat = 60.0 / obj["tempo_bpm"]
    step = beat / max(2.0, obj["density"])  # eighths or sixteenths
    ev = []
    vel0 = int(rng.integers(70, 120))
    for a, b in obj["spans"]:
        t, k = a, 0
        while t < b - 0.05:
            v = int(np.clip(vel0 + rng.integers(-15, 10), 30, 127))
            if kind == "kit":
                pos = k % 8
                if pos in (0, 4) or (pos == 6 and rng.random() < 0.3):
                    ev.append((t, "on", (int(rng.choice(M.KIT["kick"])), v, 0.1)))
                if pos in (2, 6):
                    ev.append((t, "on", (int(rng.choice(M.KIT["snare"])), v, 0.1)))
                if rng.random() < 0.8:
                    ev.append((t, "on", (int(rng.choice(M.KIT["hat"])), max(30, v - 25), 0.05)))
                if k % 32 == 28 and rng.random() < 0.5:
                    for j, n in enumerate(M.KIT["tom"]):
                        ev.append((t + j * step / 2, "on", (n, v, 0.1)))
                if k % 32 == 0 and rng.random() < 0.4:
                    ev.append((t, "on", (int(rng.choice(M.KIT["cymbal"])), v, 0.3)))
            elif rng.random() < 0.75:
                ev.append((t, "on", (int(rng.choice(M.CONGA_NOTES)), v, 0.1)))
            t += step
            k += 1
    return ev


def span_mask(spans, n, fade_s=0.15):
    m = np.zeros(n, np.float32)
    f = int(fade_s * SR)
    for a, b in spans:
        i, j = int(a * SR), min(n, int(b * SR))
        m[i:j] = 1.0
        tail = np.linspace(1.0, 0.0, f, dtype=np.float32)
        k = min(f, n - j)
        m[j:j + k] = np.maximum(m[j:j + k], tail[:k])
    return m


def loop_recording(rng, x, spans, n):
    """A real recording looped (random start, 40 ms crossfades) to fill each span."""
    out = np.zeros(n, np.float32)
    xf = int(0.04 * SR)
    ramp = np.linspace(0, 1, xf, dtype=np.float32)
    for a, b in spans:
        i, j = int(a * SR), min(n, int(b * SR))
        pos = int(rng.integers(0, max(1, len(x) // 2)))
        while i < j:
            chunk = x[pos:].copy() if pos else x.copy()
            pos = 0
            chunk *= np.float32(10 ** (rng.uniform(-2, 2) / 20))
            chunk = chunk[: j - i + xf]
            if len(chunk) > 2 * xf:
                chunk[:xf] *= ramp
                chunk[-xf:] *= ramp[::-1]
            out[i:i + len(chunk)] += chunk[: n - i]
            i += max(xf, len(chunk) - xf)
    return out


def hit_sequence(rng, obj, hits, n):
    out = np.zeros(n, np.float32)
    step = 60.0 / obj["tempo_bpm"] / max(1.0, obj["density"])
    for a, b in obj["spans"]:
        t = a
        while t < b - 0.05:
            if rng.random() < 0.85:
                h = hits[int(rng.integers(len(hits)))] * np.float32(10 ** (rng.uniform(-6, 0) / 20))
                i = int(t * SR)
                k = min(len(h), n - i)
                out[i:i + k] += h[:k]
            t += step
    return out


def render_stem(rng, obj, dur, cache, tmp, tag):
    n = int(round(dur * SR))
    src = obj["source"]
    kind = src[0]
    if kind in ("gm", "gmdrum"):
        if kind == "gm":
            _, (lo, hi), style = M.GM[obj["instrument"]]
            ev = phrase_events(rng, obj, style, lo, hi, dur)
            bank, prog, ch = src[2], src[3], 0
        else:
            ev = drum_events(rng, obj, src[2])
            bank, prog, ch = 0, 0, 9
        mid = os.path.join(tmp, f"{tag}.mid")
        M.write_midi(mid, ev, bank=bank, program=prog, channel=ch)
        x = M.render_midi(mid, src[1], os.path.join(tmp, f"{tag}.wav"))
        obj["notes"] = sum(1 for e in ev if e[1] == "on")
    elif kind == "rec":
        x = loop_recording(rng, M.recording(cache, src[1], src[2]), obj["spans"], n)
    else:
        hits = [M.recording(cache, src[1], r) for r in src[2]]
        x = hit_sequence(rng, obj, hits, n)
    x = np.pad(x, (0, max(0, n - len(x))))[:n]
    return x * span_mask(obj["spans"], n)


def voice_stem(vo, dur, tmp):
    n = int(round(dur * SR))
    raw = os.path.join(tmp, "voice.raw.wav")
    wav = os.path.join(tmp, "voice.wav")
    subprocess.run(["espeak-ng", "-v", vo["voice"], "-s", "150", "-w", raw, vo["text"]], check=True)
    subprocess.run(M.SOX + [raw, "-r", str(SR), "-c", "1", "-b", "16", wav], check=True)
    x = M.read_wav_mono(wav)
    i = int(vo["start_s"] * SR)
    x = x[: n - i]
    out = np.zeros(n, np.float32)
    out[i:i + len(x)] = x
    vo["spans"] = [[vo["start_s"], r1(vo["start_s"] + len(x) / SR)]]
    return out


def rms_db(x):
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def in_spans(spans, n):
    m = np.zeros(n, bool)
    for a, b in spans:
        m[int(a * SR):int(b * SR)] = True
    return m


def onset_times(x):
    """Onsets (s) by half-wave-rectified log-spectral flux with an adaptive threshold."""
    n_fft, hop = 512, 160
    if len(x) < n_fft:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(0, np.diff(mag, axis=0)).sum(axis=1)
    if flux.max() <= 0:
        return np.zeros(0)
    flux /= np.percentile(flux, 99) + 1e-9
    k = 25
    pad = np.pad(flux, k, mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 1), axis=1)
    peaks = []
    for i in range(1, len(flux) - 1):
        if flux[i] > med[i] + 0.15 and flux[i] >= flux[i - 1] and flux[i] >= flux[i + 1]:
            if not peaks or i - peaks[-1] >= 6:  # 60 ms apart
                peaks.append(i)
    return (np.array(peaks) + 1) * hop / SR


def random_eq(aug, x):
    """A random smooth equaliser: a tilt of up to +-3 dB per octave about 1 kHz plus three
    bumps or notches of up to +-9 dB, one octave wide, at random frequencies (80 Hz-6 kHz),
    so one training sound source passes for many microphones, rooms and instruments."""
    f = np.fft.rfftfreq(len(x), 1 / SR)
    octv = np.log2(np.maximum(f, 20.0) / 1000.0)
    gain_db = aug.uniform(-3, 3) * np.clip(octv, -4, 3)
    for _ in range(3):
        c = np.log2(aug.uniform(80, 6000) / 1000.0)
        gain_db += aug.uniform(-9, 9) * np.exp(-0.5 * ((octv - c) / 0.5) ** 2)
    y = np.fft.irfft(np.fft.rfft(x) * 10 ** (gain_db / 20), n=len(x))
    return y.astype(np.float32)


def render_audio(rng, scene, cache, tmp, aug=None):
    dur = scene["duration_s"]
    n = int(round(dur * SR))
    stems = []
    for k, o in enumerate(scene["objects"]):
        if not o["audible"]:
            continue
        x = render_stem(rng, o, dur, cache, tmp, f"stem{k}")
        if aug is not None:
            x = random_eq(aug, x) * span_mask(o["spans"], n)
        m = in_spans(o["spans"], n)
        x *= np.float32(10 ** ((o["level_db"] - rms_db(x[m])) / 20))
        stems.append((o, x))
    mix = np.zeros(n, np.float32)
    for _, x in stems:
        mix += x
    vo = scene["voiceover"]
    if vo:
        v = voice_stem(vo, dur, tmp)
        v *= np.float32(10 ** ((vo["level_db"] - rms_db(v[in_spans(vo["spans"], n)])) / 20))
        mix += v
    peak = float(np.abs(mix).max())
    gain = 0.9 / peak if peak > 0.9 else 1.0
    mix *= np.float32(gain)
    secs = int(np.ceil(dur))
    for o, x in stems:
        x = x * np.float32(gain)
        m = in_spans(o["spans"], n)
        o["loudness_db"] = r1(rms_db(x[m]))
        o["loudness_per_s_db"] = [r1(max(-90.0, rms_db(x[i * SR:(i + 1) * SR]))) for i in range(secs)]
        on = onset_times(x)
        sounding = sum(b - a for a, b in o["spans"])
        on = [t for t in on if any(a - 0.05 <= t <= b for a, b in o["spans"])]
        o["onsets"] = len(on)
        o["onset_rate_hz"] = round(len(on) / max(sounding, 1e-3), 2)
        o["envelope"] = x  # for the picture, dropped before writing
    if vo:
        vo["level_db"] = r1(vo["level_db"] + 20 * np.log10(gain))
    return mix


# ---------------------------------------------------------------- pictures

def background(rng, place, W):
    """A procedural room (wall, floor, window or curtains, frames) or landscape (sky, sun,
    clouds, hills, trees, grass). Returns an RGB image and the floor line (px)."""
    img = Image.new("RGB", (W, W))
    d = ImageDraw.Draw(img)
    floor = int(W * rng.uniform(0.68, 0.8))
    jitter = lambda c, s=25: tuple(int(np.clip(v + rng.integers(-s, s + 1), 0, 255)) for v in c)  # noqa: E731
    if place == "indoor":
        wall = jitter([(196, 170, 140), (150, 160, 180), (210, 205, 190), (120, 60, 60),
                       (70, 70, 90)][int(rng.integers(5))], 20)
        d.rectangle([0, 0, W, floor], fill=wall)
        plank = jitter((130, 90, 55), 30)
        d.rectangle([0, floor, W, W], fill=plank)
        for y in range(floor, W, int(rng.integers(10, 22))):
            d.line([0, y, W, y], fill=tuple(max(0, c - 30) for c in plank), width=2)
        deco = rng.choice(["window", "curtains", "frames", "stage"])
        if deco == "window":
            x0 = int(rng.uniform(0.1, 0.6) * W)
            d.rectangle([x0, int(0.1 * W), x0 + int(0.3 * W), int(0.4 * W)], fill=(170, 210, 240),
                        outline=(240, 240, 240), width=6)
        elif deco == "curtains":
            c = jitter((150, 20, 30), 30)
            d.rectangle([0, 0, int(0.12 * W), floor], fill=c)
            d.rectangle([W - int(0.12 * W), 0, W, floor], fill=c)
            d.rectangle([0, 0, W, int(0.06 * W)], fill=c)
        elif deco == "frames":
            for _ in range(int(rng.integers(1, 4))):
                x0, y0 = int(rng.uniform(0.05, 0.8) * W), int(rng.uniform(0.05, 0.3) * W)
                d.rectangle([x0, y0, x0 + int(0.15 * W), y0 + int(0.12 * W)], fill=jitter((120, 140, 110), 60),
                            outline=(90, 60, 30), width=5)
        else:
            for k in range(3):
                x = int((0.2 + 0.3 * k) * W)
                d.polygon([(x - 10, 0), (x + 10, 0), (x + 60, floor), (x - 60, floor)], fill=jitter((235, 225, 160), 15))
        d.line([0, floor, W, floor], fill=(60, 40, 20), width=4)
    else:
        top, bottom = np.array(jitter((90, 150, 230))), np.array(jitter((200, 225, 250)))
        for y in range(floor):
            d.line([0, y, W, y], fill=tuple(int(v) for v in top + (bottom - top) * y / floor))
        if rng.random() < 0.6:
            sx, sy = int(rng.uniform(0.1, 0.9) * W), int(rng.uniform(0.05, 0.2) * W)
            d.ellipse([sx - 25, sy - 25, sx + 25, sy + 25], fill=(255, 230, 120))
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = int(rng.uniform(0, W)), int(rng.uniform(0.05, 0.3) * W)
            for j in range(4):
                r = int(rng.integers(15, 30))
                d.ellipse([cx + j * 20 - r, cy - r, cx + j * 20 + r, cy + r], fill=(250, 250, 252))
        hill = jitter((90, 140, 80))
        pts = [(0, floor)] + [(x, floor - int(rng.uniform(0.05, 0.2) * W)) for x in np.linspace(0, W, 6)] + [(W, floor)]
        d.polygon(pts, fill=hill)
        ground = jitter([(80, 160, 70), (200, 180, 120), (120, 120, 120)][int(rng.integers(3))])
        d.rectangle([0, floor, W, W], fill=ground)
        for _ in range(int(rng.integers(0, 4))):
            tx = int(rng.uniform(0, W))
            ty = floor - int(rng.uniform(0.0, 0.05) * W)
            d.rectangle([tx - 6, ty - 70, tx + 6, ty], fill=(100, 70, 40))
            d.ellipse([tx - 40, ty - 140, tx + 40, ty - 50], fill=jitter((40, 110, 50)))
    return img.filter(ImageFilter.GaussianBlur(0.8)), floor


def augment_picture(aug, im):
    """Random look of one RGBA picture: hue turn, saturation, brightness, contrast, sometimes
    grey, posterised (flat emoji-like colours), blurred or outlined, stretched and tilted."""
    alpha = im.getchannel("A")
    rgb = im.convert("RGB")
    if aug.random() < 0.5:
        h, s_, v = rgb.convert("HSV").split()
        turn = int(aug.integers(0, 256))
        h = h.point(lambda p: (p + turn) % 256)
        rgb = Image.merge("HSV", (h, s_, v)).convert("RGB")
    rgb = ImageEnhance.Color(rgb).enhance(aug.uniform(0.3, 1.6))
    rgb = ImageEnhance.Brightness(rgb).enhance(aug.uniform(0.7, 1.3))
    rgb = ImageEnhance.Contrast(rgb).enhance(aug.uniform(0.6, 1.4))
    r = aug.random()
    if r < 0.15:
        rgb = ImageOps.grayscale(rgb).convert("RGB")
    elif r < 0.35:
        rgb = ImageOps.posterize(rgb, int(aug.integers(2, 4)))
    elif r < 0.5:
        rgb = rgb.filter(ImageFilter.GaussianBlur(aug.uniform(1.0, 2.5)))
    elif r < 0.6:
        edges = rgb.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda p: 255 if p > 40 else 0)
        edges = ImageOps.invert(edges)
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, (20, 20, 20)), edges)
    im = rgb.convert("RGBA")
    im.putalpha(alpha)
    w, h = im.size
    st = aug.uniform(0.8, 1.25)
    im = im.resize((max(1, int(w * st)), max(1, int(h / st))), Image.BILINEAR)
    return im.rotate(aug.uniform(-15, 15), resample=Image.BILINEAR, expand=True)


def place_sprite(rng, im, W, floor, position):
    """Scale a picture to its size in the frame and stand it in its slot on the floor.
    Returns the scaled picture, its top-left corner and its base line (px)."""
    w, h = im.size
    # Similar areas for long and wide pictures, within a third of the frame's width.
    side = rng.uniform(0.26, 0.34) * W
    s = min(side / np.sqrt(w * h), 0.62 * W / h, 0.32 * W / w)
    im = im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.LANCZOS)
    cx = int((SLOT_X[position] + rng.uniform(-0.03, 0.03)) * W)
    base = int(floor + rng.uniform(0.0, 0.12) * W)
    base = min(base, W - 4)
    return im, cx - im.size[0] // 2, base - im.size[1], base


def prepare_sprites(rng, scene, cache, W, floor, aug=None):
    out = []
    for o in scene["objects"]:
        if not o["visible"]:
            continue
        im = M.load_sprite(cache, tuple(o["picture"]))
        if aug is not None:
            im = augment_picture(aug, im)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im, x0, y0, base = place_sprite(rng, im, W, floor, o["position"])
        o["bbox_px"] = [max(0, x0), max(0, y0), min(W, x0 + im.size[0]), min(W, base)]
        out.append((o, im, x0, y0))
    return out


def render_frames(rng, scene, cache, fps, W, aug=None):
    bg, floor = background(rng, scene["place"], W)
    sprites = prepare_sprites(rng, scene, cache, W, floor, aug)
    n_frames = int(round(scene["duration_s"] * fps))
    for f in range(n_frames):
        t = (f + 0.5) / fps
        frame = bg.copy()
        for o, im, x0, y0 in sprites:
            dx = dy = 0
            spr = im
            env = o.get("envelope")
            if env is not None:
                i = int(t * SR)
                seg = env[max(0, i - SR // (2 * fps)): i + SR // (2 * fps)]
                level = float(np.sqrt(np.mean(np.square(seg)))) if len(seg) else 0.0
                e = float(np.clip((20 * np.log10(level + 1e-9) + 50) / 30, 0, 1))
                if e > 0:
                    dy = -int(e * 10 * abs(np.sin(2 * np.pi * 2.3 * t + o["position_phase"])))
                    dx = int(e * 4 * np.sin(2 * np.pi * 1.7 * t))
                    spr = im.rotate(e * 5 * np.sin(2 * np.pi * 1.1 * t), resample=Image.BILINEAR, expand=False)
            frame.paste(spr, (x0 + dx, y0 + dy), spr)
        yield frame.tobytes()


# ---------------------------------------------------------------- encoding and driver

def encode(frames, fps, W, audio_wav, out):
    part = out + ".part"
    cmd = ["gst-launch-1.0", "-q",
           "fdsrc", "fd=0", "!", "rawvideoparse", f"width={W}", f"height={W}", "format=rgb",
           f"framerate={fps}/1", "!", "videoconvert", "!",
           "vp8enc", "deadline=1", "cpu-used=8", "threads=1", "target-bitrate=500000",
           f"keyframe-max-dist={4 * fps}", "!", "queue", "!", "mux.",
           "filesrc", f"location={audio_wav}", "!", "wavparse", "!", "audioconvert", "!",
           "vorbisenc", "quality=0.4", "!", "queue", "!", "mux.",
           "webmmux", "name=mux", "!", "filesink", f"location={part}"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    try:
        for fr in frames:
            p.stdin.write(fr)
    finally:
        p.stdin.close()
    if p.wait() != 0:
        raise RuntimeError(f"gst-launch-1.0 failed for {out}")
    os.replace(part, out)


def ground_truth(scene, media, fps, W):
    objs = []
    for k, o in enumerate(scene["objects"]):
        g = {"id": k, "instrument": o["instrument"], "visible": o["visible"],
             "position": o.get("position"), "audible": o["audible"], "spans": o["spans"]}
        if o["visible"]:
            g["picture"] = M.picture_name(o["picture"])
            g["bbox_px"] = o["bbox_px"]
        if o["audible"]:
            g.update({k2: o[k2] for k2 in ("level_db", "loudness_db", "onset_rate_hz", "onsets",
                                           "tempo_bpm", "density", "loudness_per_s_db")})
            g["sound_source"] = M.source_name(o["source"])
            if "notes" in o:
                g["notes"] = o["notes"]
        objs.append(g)
    vo = scene["voiceover"]
    return {"version": GT_VERSION, "clip_id": scene["clip_id"], "split": scene["split"],
            "media": os.path.basename(media), "duration_s": scene["duration_s"],
            "frame": {"width_px": W, "height_px": W, "fps": fps},
            "place": scene["place"], "objects": objs,
            "voiceover": ({"present": True, **vo} if vo else {"present": False})}


def render_clip(seed, split, index, args):
    rng = np.random.default_rng([seed, M.SPLITS.index(split), index])
    clip_id = f"{split}-{index:05d}"
    dur = int(rng.integers(args.min_s, args.max_s + 1))
    scene = sample_scene(rng, split, clip_id, dur)
    for o in scene["objects"]:
        o["position_phase"] = float(rng.uniform(0, 6.28))
    media = os.path.join(args.out, clip_id + ".webm")
    aug = None
    if args.augment and split == "train":
        aug = np.random.default_rng([seed, M.SPLITS.index(split), index, AUG_STREAM])
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        mix = render_audio(rng, scene, args.cache, tmp, aug)
        wav = os.path.join(tmp, "mix.wav")
        M.write_wav(wav, mix)
        encode(render_frames(rng, scene, args.cache, args.fps, FRAME_PX, aug), args.fps, FRAME_PX, wav, media)
    gt = ground_truth(scene, media, args.fps, FRAME_PX)
    path = os.path.join(args.out, clip_id + ".json")
    with open(path + ".part", "w") as f:
        json.dump(gt, f, indent=1)
    os.replace(path + ".part", path)
    return gt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", choices=M.SPLITS, required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--start", type=int, default=0, help="index of the first clip")
    ap.add_argument("--min-s", type=int, default=10)
    ap.add_argument("--max-s", type=int, default=60)
    ap.add_argument("--fps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tspm-edge/data-material"))
    ap.add_argument("--force", action="store_true", help="re-render clips that exist")
    ap.add_argument("--augment", action="store_true",
                    help="training split: random equaliser on the stems, random look of the pictures")
    args = ap.parse_args()
    if not 10 <= args.min_s <= args.max_s:
        ap.error("need 10 <= --min-s <= --max-s")
    for tool in ("fluidsynth", "sox", "espeak-ng", "rsvg-convert", "gst-launch-1.0"):
        if not shutil.which(tool):
            sys.exit(f"synth: {tool} not found; run models/data/install-material.sh")
    M.check_split()
    os.makedirs(args.out, exist_ok=True)
    total_media = total_wall = 0.0
    for i in range(args.start, args.start + args.count):
        clip = os.path.join(args.out, f"{args.split}-{i:05d}")
        if not args.force and os.path.exists(clip + ".json") and os.path.exists(clip + ".webm"):
            continue
        t0 = time.time()
        gt = render_clip(args.seed, args.split, i, args)
        wall = time.time() - t0
        total_media += gt["duration_s"]
        total_wall += wall
        desc = ", ".join(f"{o['instrument']}{'' if o['visible'] else '(hidden)'}"
                         f"{'' if o['audible'] else '(silent)'}" for o in gt["objects"])
        log(f"{gt['clip_id']}: {gt['duration_s']:.0f} s, {gt['place']}, {desc}"
            f"{', voice-over' if gt['voiceover']['present'] else ''} ({wall:.1f} s)")
    if total_media:
        log(f"rendered {total_media:.0f} s of media in {total_wall:.1f} s wall "
            f"({total_wall / total_media:.3f} s per media second)")


if __name__ == "__main__":
    main()
