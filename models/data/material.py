"""The material the scene synthesiser draws from: which Debian file stands for which
MUSIC-AVQA instrument, in which split, and the code that turns those files into sprites
(RGBA numpy arrays) and 16 kHz mono waveforms (float32 numpy arrays).

Everything is read from installed Debian packages (`models/data/install-material.sh`); derived
files (rasterised SVGs, decoded recordings, Qt resource extracts) are cached under the cache
dir. See `DATA_CARD.md` for packages and licences.

**The split is by file.** Every picture and every recording belongs to exactly one of
`train` / `test` (validation draws from the train material, with its own seeds). Soundfont
renders are split by soundfont: FluidR3_GM and MuseScore_General_Lite for train, TimGM6mb for
test (ukulele, which TimGM6mb lacks, renders from MuseScore's bank 8 in test and FluidR3's
in train). `check_split()` asserts that no file is in both.
"""

import os
import struct
import subprocess
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SR = 16000
SF_FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SF_MUSESCORE = "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"
SF_TIMGM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
GC_RCC = "/usr/share/gcompris-qt/rcc"
TUX = "/usr/share/tuxpaint/stamps/hobbies/music"
OCA = "/usr/share/openclipart/svg/recreation/music"
SONICPI = "/usr/share/sonic-pi/samples"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SF_CSOUND = "/usr/share/sounds/sf2/sf_GMbank.sf2"
EMOJIONE = "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/svg"
EMOJIFY = "/usr/share/javascript/emojify.js/images/emoji"

SPLITS = ("train", "val", "test")


def material_split(split):
    """Validation scenes use the training material (with other seeds): the test split alone
    is held out."""
    return "test" if split == "test" else "train"


# ---------------------------------------------------------------- pictures
# A picture is (kind, ref): kind "gc" = gcompris-qt-data instruments.rcc, "gcx" = the
# xylophone composed from gcompris-qt-data melody.rcc, "oc" = openclipart-svg
# recreation/music, "tux" = tuxpaint-stamps-default hobbies/music, "emoji" = a code point of
# Noto Color Emoji, "e1" = an EmojiOne 3 SVG (ruby-gemojione), "ej" = an emojify.js PNG
# (libjs-emojify). Training has emoji of two other artists (EmojiOne, emojify.js) where they
# draw the instrument; test keeps Noto's.

PICTURES = {
    "accordion": {"train": [("gc", "accordion.svg")], "test": [("emoji", 0x1FA97)]},
    "acoustic_guitar": {
        "train": [("gc", "guitar.svg"), ("oc", "guitar_ganson.svg"),
                  ("oc", "guitar_jarno_vasamaa1.svg")],
        # (openclipart's guitar_jarno_vasamaa2 and tuxpaint's guitar2 are electric guitars)
        "test": [("tux", "string/guitar_classical.png")]},
    "banjo": {"train": [("gc", "banjo.svg")], "test": [("emoji", 0x1FA95)]},
    # The only bassoon picture (tuxpaint) goes to train; bassoon is audio-only in test.
    "bassoon": {"train": [("tux", "wind/bassoon.png")], "test": []},
    "cello": {"train": [("gc", "cello.svg"), ("oc", "cello_ganson.svg")],
              "test": [("tux", "string/cello.png")]},
    "clarinet": {"train": [("gc", "clarinet.svg")], "test": []},
    # No conga picture exists: bongos (gcompris) and a tall hand drum (openclipart) in train,
    # the "long drum" emoji in test. The data card says so.
    "congas": {"train": [("gc", "bongo.svg"), ("oc", "africandrum_benji_park1.svg")],
               "test": [("emoji", 0x1FA98)]},
    "drum": {"train": [("gc", "drum_kit.svg"), ("gc", "snare_drum.svg"),
                       ("oc", "drums_jarno_vasamaa_.svg"), ("e1", "1F941")],
             "test": [("tux", "percussion/drumkit.png"), ("tux", "percussion/drum_tomtom_floor.png"),
                      ("emoji", 0x1F941)]},
    "electric_bass": {"train": [("oc", "bass_guitar_a.j._ashton_.svg")],
                      # (tuxpaint's guitar_electric_bass2.svg is the openclipart drawing)
                      "test": [("tux", "string/guitar_electric_bass.png")]},
    "flute": {"train": [("gc", "flute_traversiere.svg"), ("oc", "flute_ganson.svg")],
              "test": [("emoji", 0x1FA88)]},
    "piano": {"train": [("gc", "piano.svg"), ("oc", "piano_geraint_luff_01.svg"), ("e1", "1F3B9"),
                        ("ej", "musical_keyboard.png")],
              "test": [("emoji", 0x1F3B9)]},
    "saxophone": {"train": [("gc", "saxophone.svg"), ("oc", "saxophone_jarno_vasamaa_.svg"),
                            ("e1", "1F3B7"), ("ej", "saxophone.png")],
                  "test": [("emoji", 0x1F3B7)]},
    "trumpet": {"train": [("gc", "trumpet.svg"), ("oc", "trumpet_b_flat__ganson.svg"),
                          ("oc", "trumpet_b_flat_colour_ganso.svg"), ("e1", "1F3BA"),
                          ("ej", "trumpet.png")],
                "test": [("tux", "brass/trumpet.png"), ("emoji", 0x1F3BA)]},
    "tuba": {"train": [("gc", "tuba.svg")], "test": []},
    "violin": {"train": [("gc", "violin.svg"), ("oc", "violin_colour_ganson.svg"),
                         ("oc", "violin_ganson.svg"), ("e1", "1F3BB"), ("ej", "violin.png")],
               "test": [("tux", "string/violin.png"), ("tux", "string/violin2.svg"),
                        ("emoji", 0x1F3BB)]},
    "xylophone": {"train": [("oc", "xylophone_ganson.svg")], "test": [("gcx", "xylofon")]},
}
# Instruments of the MUSIC-AVQA vocabulary with no picture in any installed package.
AUDIO_ONLY = ["bagpipe", "erhu", "guzheng", "pipa", "suona", "ukulele"]

# ---------------------------------------------------------------- sounds
# A sound source is one of
#   ("gm", soundfont, bank, program)      a MIDI phrase rendered with fluidsynth
#   ("gmdrum", soundfont, kit_notes)      a percussion pattern on MIDI channel 10
#   ("rec", kind, ref)                    a real recording, looped over the span
#   ("hits", kind, [refs])                real one-shot recordings sequenced into a pattern
# kind "gc" = gcompris-qt-data (instruments.rcc unless the ref names another rcc), "tux" =
# tuxpaint-stamps-default, "sp" = sonic-pi-samples.

KIT = {"kick": [35, 36], "snare": [38, 40], "hat": [42, 44, 46], "tom": [41, 43, 45, 47],
       "cymbal": [49, 51]}
CONGA_NOTES = [62, 63, 64]

# Per instrument: GM programs (bank, program), pitch range (MIDI), style.
GM = {
    "accordion": ([(0, 21), (0, 23)], (55, 79), "chords"),
    "acoustic_guitar": ([(0, 24), (0, 25)], (40, 76), "strum"),
    "bagpipe": ([(0, 109)], (62, 81), "legato"),
    "banjo": ([(0, 105)], (55, 81), "pluck"),
    "bassoon": ([(0, 70)], (34, 60), "legato"),
    "cello": ([(0, 42)], (36, 64), "legato"),
    "clarinet": ([(0, 71)], (52, 84), "legato"),
    "electric_bass": ([(0, 33), (0, 34)], (28, 52), "bass"),
    "erhu": ([(0, 110)], (62, 86), "slide"),
    "flute": ([(0, 73)], (72, 96), "legato"),
    "guzheng": ([(0, 107)], (50, 86), "gliss"),
    "piano": ([(0, 0), (0, 1)], (40, 88), "chords"),
    "pipa": ([(0, 106)], (52, 84), "tremolo"),
    "saxophone": ([(0, 65), (0, 66)], (49, 80), "legato"),
    "suona": ([(0, 111)], (62, 86), "legato"),
    "trumpet": ([(0, 56)], (55, 82), "legato"),
    "tuba": ([(0, 58)], (28, 53), "bass"),
    "ukulele": ([(8, 24)], (60, 81), "strum"),
    "violin": ([(0, 40)], (55, 91), "legato"),
    "xylophone": ([(0, 13), (0, 12)], (65, 96), "pluck"),
}
TRAIN_FONTS = [SF_FLUID, SF_MUSESCORE, SF_CSOUND]
TEST_FONTS = [SF_TIMGM]

RECORDINGS = {
    "train": {
        "accordion": [("rec", "gc", "accordion.ogg")],
        "acoustic_guitar": [("rec", "gc", "guitar.ogg"),
                            ("rec", "gc", "memory-sound:guitar_melody.ogg")],
        "banjo": [("rec", "gc", "banjo.ogg")],
        "cello": [("rec", "gc", "cello.ogg")],
        "clarinet": [("rec", "gc", "clarinet.ogg")],
        "congas": [("rec", "gc", "bongo.ogg")],
        "drum": [("rec", "gc", "drum_kit.ogg"), ("rec", "gc", "snare_drum.ogg")],
        "flute": [("rec", "gc", "flute_traversiere.ogg")],
        "piano": [("rec", "gc", "piano.ogg")],
        "saxophone": [("rec", "gc", "saxophone.ogg")],
        "trumpet": [("rec", "gc", "trumpet.ogg")],
        "tuba": [("rec", "gc", "tuba.ogg")],
        "violin": [("rec", "gc", "violin.ogg")],
        "xylophone": [("hits", "gc", ["melody:xylofon_son1.wav", "melody:xylofon_son2.wav",
                                      "melody:xylofon_son3.wav", "melody:xylofon_son4.wav"])],
    },
    "test": {
        "bassoon": [("rec", "tux", "wind/bassoon.ogg")],
        "cello": [("rec", "tux", "string/cello.ogg")],
        "violin": [("rec", "tux", "string/violin.ogg")],
        "drum": [("rec", "tux", "percussion/drumkit.ogg"),
                 ("hits", "sp", ["drum_heavy_kick.flac", "drum_snare_hard.flac",
                                 "drum_cymbal_closed.flac", "drum_tom_mid_hard.flac",
                                 "drum_bass_hard.flac", "drum_snare_soft.flac",
                                 "drum_tom_lo_hard.flac", "drum_cymbal_pedal.flac"])],
        "piano": [("rec", "sp", "ambi_piano.flac")],
    },
}

# Voice-over: espeak-ng voices and sentences, disjoint between the splits.
VOICES = {"train": ["en", "en-us", "de", "fr", "en+m3", "en-us+f2", "nl"],
          "test": ["en-gb-scotland", "es", "it", "en-gb-x-rp+f3", "pt"]}
SENTENCES = {
    "train": [
        "Welcome to tonight's concert, please switch off your phones.",
        "This piece was written for a small ensemble in the spring.",
        "Thank you all for coming, the next song is about the sea.",
        "Our first performer has travelled a long way to be here.",
        "The rehearsal starts again after a short break.",
        "Please take your seats, the music begins in a moment.",
        "This tune comes from an old folk song my grandmother sang.",
        "We recorded this in one take, so forgive the small mistakes.",
    ],
    "test": [
        "Good evening and welcome to the festival stage.",
        "The band will play three more songs before the interval.",
        "Listen closely to the melody in the second half.",
        "This recording was made in a village hall last summer.",
        "Remember to subscribe for more performances like this one.",
        "Our guest tonight learned to play when she was seven.",
    ],
}


def sound_sources(instrument, split):
    """Every source of `instrument` in the material split of `split`, as tuples (see above)."""
    mat = material_split(split)
    out = []
    fonts = TRAIN_FONTS if mat == "train" else TEST_FONTS
    if instrument == "drum":
        out += [("gmdrum", sf, "kit") for sf in fonts]
    elif instrument == "congas":
        out += [("gmdrum", sf, "congas") for sf in fonts]
    elif instrument == "ukulele":
        out.append(("gm", SF_FLUID if mat == "train" else SF_MUSESCORE, 8, 24))
    else:
        progs = GM[instrument][0]
        out += [("gm", sf, bank, prog) for sf in fonts for bank, prog in progs]
    out += RECORDINGS[mat].get(instrument, [])
    return out


def pictures(instrument, split):
    return PICTURES.get(instrument, {}).get(material_split(split), [])


def picture_name(pic):
    """A short human-readable name of a picture for the ground truth."""
    kind, ref = pic
    if kind == "emoji":
        return f"emoji U+{ref:X} (Noto Color Emoji)"
    if kind == "e1":
        return f"emoji U+{ref} (EmojiOne 3, ruby-gemojione)"
    if kind == "ej":
        return f"emojify.js {ref} (libjs-emojify)"
    return {"gc": "gcompris-qt-data instruments.rcc:", "gcx": "gcompris-qt-data melody.rcc:",
            "oc": "openclipart-svg recreation/music/", "tux": "tuxpaint-stamps-default hobbies/music/"}[kind] + ref


def check_split():
    """No picture file and no recording is in both splits."""
    for inst, by in PICTURES.items():
        assert not set(by["train"]) & set(by["test"]), inst
    def files(split):
        return {(s[1], r) for v in RECORDINGS[split].values() for s in v
                for r in (s[2] if isinstance(s[2], list) else [s[2]])}
    assert not files("train") & files("test")
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)
    assert not set(VOICES["train"]) & set(VOICES["test"])


def source_name(src):
    """A short human-readable name of a source for the ground truth."""
    kind = src[0]
    if kind == "gm":
        return f"fluidsynth {os.path.basename(src[1])} {src[2]}:{src[3]}"
    if kind == "gmdrum":
        return f"fluidsynth {os.path.basename(src[1])} percussion {src[2]}"
    if kind == "rec":
        return f"recording {src[1]}:{src[2]}"
    return f"one-shots {src[1]}:" + ",".join(src[2])


# ---------------------------------------------------------------- Qt resource files

def read_rcc(path):
    """{path inside: bytes} of a Qt binary resource file (format versions 1-3, zlib or none)."""
    b = open(path, "rb").read()
    if b[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource file")
    ver, tree, data, names = struct.unpack(">IIII", b[4:20])
    node = 14 if ver == 1 else 22
    out = {}

    def name(off):
        (n,) = struct.unpack(">H", b[names + off:names + off + 2])
        return b[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(i, prefix):
        p = tree + i * node
        noff, flags = struct.unpack(">IH", b[p:p + 6])
        nm = name(noff) if i else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", b[p + 6:p + 14])
            for c in range(count):
                walk(first + c, prefix + nm + "/" if i else "")
            return
        (doff,) = struct.unpack(">I", b[p + 10:p + 14])
        (size,) = struct.unpack(">I", b[data + doff:data + doff + 4])
        raw = b[data + doff + 4:data + doff + 4 + size]
        if flags & 1:  # qCompress: 4-byte length, then a zlib stream
            raw = zlib.decompress(raw[4:])
        elif flags & 4:
            raise ValueError(f"{path}: zstd-compressed entry {prefix + nm}")
        out[prefix + nm] = raw

    walk(0, "")
    return out


def gc_file(cache, ref):
    """Extract one gcompris-qt-data resource into the cache; return its path. `ref` is
    `name` (instruments.rcc) or `rcc:name`."""
    rcc, name = ref.split(":") if ":" in ref else ("instruments", ref)
    d = os.path.join(cache, "gcompris", rcc)
    path = os.path.join(d, name)
    if not os.path.exists(path):
        os.makedirs(d, exist_ok=True)
        for k, v in read_rcc(os.path.join(GC_RCC, rcc + ".rcc")).items():
            with open(os.path.join(d, os.path.basename(k)) + ".part", "wb") as f:
                f.write(v)
            os.replace(os.path.join(d, os.path.basename(k)) + ".part", os.path.join(d, os.path.basename(k)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not in {rcc}.rcc")
    return path


# ---------------------------------------------------------------- pictures → sprites

def _rasterise(svg, png, height=512):
    subprocess.run(["rsvg-convert", "-h", str(height), "-o", png + ".part", svg], check=True)
    os.replace(png + ".part", png)


def _crop_alpha(im):
    bbox = im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    return im.crop(bbox) if bbox else im


def picture_path(cache, pic):
    """A cached RGBA PNG of the picture, cropped to its opaque pixels."""
    kind, ref = pic
    d = os.path.join(cache, "sprites")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, f"{kind}_{str(ref).replace('/', '_')}.png")
    if os.path.exists(out):
        return out
    tmp = out + ".raw.png"
    if kind == "gc":
        _rasterise(gc_file(cache, ref), tmp)
        im = Image.open(tmp).convert("RGBA")
    elif kind == "oc":
        _rasterise(os.path.join(OCA, ref), tmp)
        im = Image.open(tmp).convert("RGBA")
    elif kind == "tux":
        src = os.path.join(TUX, ref)
        if src.endswith(".svg"):
            _rasterise(src, tmp)
            src = tmp
        im = Image.open(src).convert("RGBA")
    elif kind == "emoji":
        font = ImageFont.truetype(EMOJI_FONT, 109)  # CBDT bitmaps exist at 109 px only
        im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((10, 10), chr(ref), font=font, embedded_color=True)
    elif kind == "e1":
        _rasterise(os.path.join(EMOJIONE, ref + ".svg"), tmp)
        im = Image.open(tmp).convert("RGBA")
    elif kind == "ej":
        im = Image.open(os.path.join(EMOJIFY, ref)).convert("RGBA")
    elif kind == "gcx":
        im = _compose_xylophone(cache, tmp)
    else:
        raise ValueError(pic)
    _crop_alpha(im).save(out + ".part.png")
    os.replace(out + ".part.png", out)
    if os.path.exists(tmp):
        os.remove(tmp)
    return out


def _compose_xylophone(cache, tmp):
    """gcompris' melody activity draws its xylophone as a frame plus four coloured bars."""
    _rasterise(gc_file(cache, "melody:xylofon.svg"), tmp, 400)
    frame = _crop_alpha(Image.open(tmp).convert("RGBA"))
    w, h = frame.size
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    canvas.alpha_composite(frame)
    for i in range(4):
        _rasterise(gc_file(cache, f"melody:xylofon_part{i + 1}.svg"), tmp, 200)
        bar = _crop_alpha(Image.open(tmp).convert("RGBA"))
        bw = int(w * (0.62 - 0.07 * i))
        bh = max(1, int(h * 0.16))
        bar = bar.resize((bw, bh), Image.LANCZOS)
        canvas.alpha_composite(bar, ((w - bw) // 2, int(h * (0.12 + 0.2 * i))))
    return canvas


def load_sprite(cache, pic):
    return Image.open(picture_path(cache, pic)).convert("RGBA")


# ---------------------------------------------------------------- sounds → waveforms

SOX = ["sox", "-G", "-R", "-D"]  # guard against clipping; repeatable: no random dither


def read_wav_mono(path):
    import wave
    with wave.open(path, "rb") as w:
        ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    assert width == 2 and rate == SR, (path, width, rate)
    return (np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0).reshape(-1, ch).mean(axis=1)


def write_wav(path, x):
    import wave
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(path + ".part", "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    os.replace(path + ".part", path)


def recording(cache, kind, ref):
    """A real recording as 16 kHz mono float32 with leading/trailing silence trimmed and its
    peak normalised to 0.9."""
    d = os.path.join(cache, "recordings")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, f"{kind}_{ref.replace('/', '_').replace(':', '_')}.wav")
    if not os.path.exists(out):
        if kind == "gc":
            src = gc_file(cache, ref)
        elif kind == "tux":
            src = os.path.join(TUX, ref)
        elif kind == "sp":
            src = os.path.join(SONICPI, ref)
        else:
            raise ValueError(kind)
        subprocess.run(SOX + [src, "-r", str(SR), "-c", "1", "-b", "16", out + ".tmp.wav"], check=True)
        x = read_wav_mono(out + ".tmp.wav")
        os.remove(out + ".tmp.wav")
        env = np.abs(x) > 0.02 * np.abs(x).max()
        idx = np.flatnonzero(env)
        x = x[idx[0]:idx[-1] + 1] if len(idx) else x
        write_wav(out, 0.9 * x / max(1e-6, np.abs(x).max()))
    return read_wav_mono(out)


# ---------------------------------------------------------------- MIDI

def _vlq(n):
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path, events, bank=0, program=0, channel=0, tpb=480, tempo_us=500000):
    """Format-0 SMF. `events`: (time_s, kind, data) with kind "on" (pitch, vel, dur_s) or
    "bend" (value 0..16383). Times are seconds; the tempo is fixed at 120 bpm so one beat is
    0.5 s and a tick is 0.5/tpb s."""
    ticks_per_s = tpb * 1e6 / tempo_us
    evs = []
    for t, kind, data in events:
        tick = int(round(t * ticks_per_s))
        if kind == "on":
            pitch, vel, dur = data
            evs.append((tick, 2, bytes([0x90 | channel, pitch, vel])))
            evs.append((int(round((t + dur) * ticks_per_s)), 0, bytes([0x80 | channel, pitch, 0])))
        elif kind == "bend":
            v = int(data)
            evs.append((tick, 1, bytes([0xE0 | channel, v & 0x7F, (v >> 7) & 0x7F])))
    evs.sort(key=lambda e: (e[0], e[1]))
    track = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")
    if channel != 9:
        track += b"\x00" + bytes([0xB0 | channel, 0, bank])  # bank select MSB
        track += b"\x00" + bytes([0xC0 | channel, program])
    last = 0
    for tick, _, data in evs:
        track += _vlq(tick - last) + data
        last = tick
    track += b"\x00\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpb))
        f.write(b"MTrk" + struct.pack(">I", len(track)) + track)


def render_midi(mid, sf2, wav, gain=0.6):
    # Dynamic sample loading reads only the samples the phrase uses: 2x faster on the .sf3.
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", str(gain),
                    "-o", "synth.dynamic-sample-loading=1",
                    "-r", str(SR), "-F", wav, sf2, mid], check=True, stdout=subprocess.DEVNULL)
    return read_wav_mono(wav)
