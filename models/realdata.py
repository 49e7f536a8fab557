"""Real inputs for the checks: sounds rendered with espeak-ng / fluidsynth, photos from Debian
packages, their log-mel patches / preprocessed tensors, and the class-name lists.

Everything generated lands under a cache dir (DIR/cache); nothing here goes into git.
"""

import ast
import glob
import os
import shutil
import struct
import subprocess
import wave

import numpy as np
from PIL import Image

SR = 16000
GOLDEN = os.environ.get("TSPM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def log(msg):
    print(f"[models] {msg}", flush=True)


def shared_path(*parts):
    for root in (GOLDEN, "/work/shared"):
        p = os.path.join(root, *parts)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(os.path.join(*parts))


# ---------------------------------------------------------------- log-mel (spec section 4)

def hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def mel_matrix(n_fft=512, n_mels=64, sr=SR, fmin=125.0, fmax=7500.0):
    """[n_fft//2+1, n_mels], the TensorFlow `linear_to_mel_weight_matrix` recipe (HTK mel)."""
    bins = n_fft // 2 + 1
    freqs = np.linspace(0.0, sr / 2.0, bins)
    mel = hz_to_mel(freqs)
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (mel[:, None] - lower[None]) / (center - lower)[None]
    down = (upper[None] - mel[:, None]) / (upper - center)[None]
    w = np.maximum(0.0, np.minimum(up, down))
    w[0, :] = 0.0  # DC bin
    return w


def log_mel(wav, offset=0.001):
    """[frames, 64] log-mel of 16 kHz mono float audio; 25 ms periodic Hann, 10 ms hop."""
    win, hop, n_fft = 400, 160, 512
    wav = np.asarray(wav, np.float64)
    n = 1 + (len(wav) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = np.abs(np.fft.rfft(wav[idx] * window, n_fft))
    return np.log(spec @ mel_matrix() + offset).astype(np.float32)


def patches(wav, hop_frames=96, start_frame=0, min_peak=1e-3):
    """Cut [96,64] patches from a waveform; skip near-silent ones. Returns ([P,96,64], starts)."""
    mel = log_mel(wav)
    out, starts = [], []
    for f in range(start_frame, mel.shape[0] - 96 + 1, hop_frames):
        seg = wav[f * 160: f * 160 + 15600]
        if np.abs(seg).max() < min_peak:
            continue
        out.append(mel[f:f + 96])
        starts.append(f * 160 / SR)
    return np.asarray(out, np.float32).reshape(-1, 96, 64), starts


# ---------------------------------------------------------------- audio rendering

def read_wav(path):
    with wave.open(path, "rb") as w:
        ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM")
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    x = x.reshape(-1, ch).mean(axis=1)
    if rate != SR:
        raise ValueError(f"{path}: rate {rate}, expected {SR}")
    return x


def _vlq(n):
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path, program, notes, channel=0, tpb=480, tempo_us=500000):
    """Tiny format-0 MIDI writer. notes: list of (start_beats, dur_beats, pitch, velocity)."""
    events = []  # (tick, order, bytes)
    for start, dur, pitch, vel in notes:
        events.append((int(start * tpb), 1, bytes([0x90 | channel, pitch, vel])))
        events.append((int((start + dur) * tpb), 0, bytes([0x80 | channel, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")
    track += b"\x00" + bytes([0xC0 | channel, program])
    last = 0
    for tick, _, data in events:
        track += _vlq(tick - last) + data
        last = tick
    track += b"\x00\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpb))
        f.write(b"MTrk" + struct.pack(">I", len(track)) + track)


SPEECH = [
    ("en", "The quick brown fox jumps over the lazy dog while the band keeps playing."),
    ("en-us", "Which instrument is the loudest at the beginning of the concert?"),
    ("de", "Die Geige spielt leise, und das Klavier antwortet aus der Ferne."),
    ("fr", "Le violon et le piano jouent ensemble dans la grande salle."),
    ("es", "La guitarra empieza primero y luego entra la trompeta."),
]

# (name, GM program, channel, pitches) ; channel 9 = GM percussion
INSTRUMENTS = [
    ("piano", 0, 0, [60, 64, 67, 72, 67, 64, 60, 55]),
    ("acoustic_guitar", 24, 0, [52, 55, 59, 64, 59, 55, 52, 47]),
    ("violin", 40, 0, [67, 69, 71, 72, 74, 72, 71, 69]),
    ("cello", 42, 0, [48, 50, 52, 53, 55, 53, 52, 50]),
    ("trumpet", 56, 0, [60, 62, 64, 67, 64, 62, 60, 67]),
    ("flute", 73, 0, [72, 74, 76, 79, 76, 74, 72, 79]),
    ("saxophone", 65, 0, [58, 60, 62, 65, 62, 60, 58, 53]),
    ("accordion", 21, 0, [60, 64, 67, 64, 62, 65, 69, 65]),
    ("xylophone", 13, 0, [72, 76, 79, 84, 79, 76, 72, 67]),
    ("drums", 0, 9, [36, 42, 38, 42, 36, 36, 38, 46]),
]


# -R: repeatable (fixed seeds), -D: no dither -- without them sox dithers randomly when it
# writes 16-bit output and the rendered audio differs from run to run.
SOX = ["sox", "-R", "-D"]


def render_sounds(cache):
    """Render speech and instruments to 16 kHz mono WAVs under cache/audio. Returns [(name, path)]."""
    d = os.path.join(cache, "audio-v2")
    os.makedirs(d, exist_ok=True)
    sf2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
    out = []
    for i, (voice, text) in enumerate(SPEECH):
        name = f"speech_{i}_{voice}"
        wav = os.path.join(d, name + ".wav")
        if not os.path.exists(wav):
            raw = os.path.join(d, name + ".raw.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
            subprocess.run(SOX + [raw, "-r", str(SR), "-c", "1", "-b", "16", wav], check=True)
            os.remove(raw)
        out.append((f"espeak-ng -v {voice}: {text}", wav))
    for name, program, channel, pitches in INSTRUMENTS:
        wav = os.path.join(d, f"gm_{name}.wav")
        if not os.path.exists(wav):
            mid = os.path.join(d, f"gm_{name}.mid")
            notes = [(0.5 * i, 0.45, p, 100) for i, p in enumerate(pitches)]
            notes.append((4.0, 1.5, pitches[0], 100))
            write_midi(mid, program, notes, channel=channel)
            raw = os.path.join(d, f"gm_{name}.raw.wav")
            subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.8",
                            "-r", str(SR), "-F", raw, sf2, mid], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(SOX + [raw, "-r", str(SR), "-c", "1", "-b", "16", wav], check=True)
            os.remove(raw)
        out.append((f"fluidsynth FluidR3_GM program {program} ch {channel} ({name})", wav))
    return out


def audio_sets(cache):
    """Eval and calibration log-mel patches from real sounds.

    eval: patches at frame 0, 96, 192, ... (+ the golden patch made from the golden waveform);
    calib: the same clips at a half-patch offset (48 frames), so calibration != evaluation.
    Returns dict(eval=[K,1,96,64], eval_src=[...], calib=[C,1,96,64]).
    """
    ev, ev_src, cal = [], [], []
    golden = np.load(shared_path("golden", "yamnet", "wave_16k_15600.npy")).astype(np.float32)
    p, _ = patches(golden)
    ev.append(p)
    ev_src.append("golden/yamnet/wave_16k_15600.npy")
    for desc, path in render_sounds(cache):
        wav = read_wav(path)
        p, starts = patches(wav)
        ev.append(p)
        ev_src += [f"{desc} @ {s:.2f}s" for s in starts]
        c, _ = patches(wav, start_frame=48)
        cal.append(c)
    return dict(eval=np.concatenate(ev)[:, None], eval_src=ev_src,
                calib=np.concatenate(cal)[:, None])


# ---------------------------------------------------------------- Debian packages (photos, labels)

def deb_extract(cache, package):
    """`apt-get download` a Debian package into cache/debs and `dpkg -x` it; return the root."""
    d = os.path.join(cache, "debs")
    root = os.path.join(d, package)
    stamp = os.path.join(root, ".done")
    if os.path.exists(stamp):
        return root
    os.makedirs(d, exist_ok=True)
    for old in glob.glob(os.path.join(d, f"{package}_*.deb")):
        os.remove(old)
    r = subprocess.run(["apt-get", "download", package], cwd=d, capture_output=True, text=True)
    if r.returncode != 0 and os.geteuid() == 0:
        log(f"apt-get download {package} failed; running apt-get update once")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        r = subprocess.run(["apt-get", "download", package], cwd=d, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()}")
    deb = glob.glob(os.path.join(d, f"{package}_*.deb"))[0]
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg", "-x", deb, root], check=True)
    os.remove(deb)
    open(stamp, "w").write(package + "\n")
    return root


def imagenet_classes(cache):
    """1000 ImageNet class names from Debian python3-torchvision (torchvision/models/_meta.py)."""
    root = deb_extract(cache, "python3-torchvision")
    meta = glob.glob(os.path.join(root, "usr/lib/python3/dist-packages/torchvision/models/_meta.py"))[0]
    tree = ast.parse(open(meta).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            cats = ast.literal_eval(node.value)
            assert len(cats) == 1000
            return cats
    raise RuntimeError("_IMAGENET_CATEGORIES not found")


SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png", "camera.png"]


def photo_paths(cache):
    """Real photos: the CLIP golden (Franz Kafka) and scikit-image's sample photos (Debian
    python3-skimage, skimage/data/)."""
    root = deb_extract(cache, "python3-skimage")
    data = os.path.join(root, "usr/lib/python3/dist-packages/skimage/data")
    paths = [("golden/clip/franz-kafka.jpg", shared_path("golden", "clip", "franz-kafka.jpg"))]
    paths += [(f"Debian python3-skimage skimage/data/{f}", os.path.join(data, f)) for f in SKIMAGE_PHOTOS]
    return paths


def load_rgb(path):
    return Image.open(path).convert("RGB")


def preprocess(img, mean, std, size=224, crop="center", short_side=None, flip=False):
    """Bicubic resize of the short side to `short_side` (default `size`), crop size x size,
    scale to [0,1], normalise per channel. Returns [3,size,size] f32 (CHW).
    crop: 'center', 'first' (left/top) or 'last' (right/bottom)."""
    short_side = short_side or size
    w, h = img.size
    s = short_side / min(w, h)
    nw, nh = max(short_side, round(w * s)), max(short_side, round(h * s))
    r = img.resize((nw, nh), Image.BICUBIC)
    if crop == "center":
        left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    elif crop == "first":
        left, top = 0, 0
    else:
        left, top = nw - size, nh - size
    c = np.asarray(r.crop((left, top, left + size, top + size)), np.float32) / 255.0
    if flip:
        c = c[:, ::-1]
    x = (c - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def image_sets(cache, mean, std, size=None):
    """eval: each photo centre-cropped, plus its first/last crops; calib: flipped centre crops
    of a 8/7 larger short side and flipped first/last crops (different pixels from eval).
    size: the encoder's input side (default efficientnet_lite0.IMAGE_SIZE)."""
    import efficientnet_lite0 as E
    size = size or E.IMAGE_SIZE
    ev, ev_src, cal = [], [], []
    for desc, path in photo_paths(cache):
        img = load_rgb(path)
        for crop in ("center", "first", "last"):
            ev.append(preprocess(img, mean, std, size=size, crop=crop))
            ev_src.append(f"{desc} ({crop} crop)")
        cal.append(preprocess(img, mean, std, size=size, short_side=size * 8 // 7, flip=True))
        for crop in ("first", "last"):
            cal.append(preprocess(img, mean, std, size=size, short_side=size * 15 // 14, crop=crop, flip=True))
    return dict(eval=np.stack(ev), eval_src=ev_src, calib=np.stack(cal))
