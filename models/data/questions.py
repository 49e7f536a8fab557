#!/usr/bin/env python3
"""Questions from the 33 MUSIC-AVQA templates, answered from the synthesiser's ground truth.

    python3 models/data/questions.py DIR [DIR ...] --out questions.json [--per-template 2]
        [--seed 7]

Reads every ground-truth record (`*.json` with `objects`, written by `synth.py`) in the
directories, and writes one list of question records in the format of MUSIC-AVQA's
`music_avqa_*.json`: `video_id` (= the clip id), `question_id`, `type` (the JSON-ish string
`["Audio-Visual", "Temporal"]`), `question_content` (the template text exactly as in
`src/prompts.rs`), `templ_values` (JSON-ish list string), `question_deleted` (0), `anser`,
plus `clip_id` and `template_id`. `tspm-edge`'s `Question::from_template` parses them.

Standard library only, so any python3 runs it and its test.

**What each answer means** is fixed here (MUSIC-AVQA's annotators answered by eye; we answer
from the ground truth). A question is only asked when its answer is clear: loudness
differences of at least `LOUD_DB`, onsets at least `ORDER_GAP_S` apart, and so on; otherwise
that question is not generated for the clip. The definitions, per template id:

 0 yes iff every audible instrument is visible.
 1 yes iff the instrument's sounding spans cover >= 95 % of the clip; no if <= 75 %.
 2 yes iff there is a voice-over (speech).
 3 number of visible instruments that sound.       4  number of types among them.
 5 number of visible instruments that never sound. 6  number of visible, sounding <Object>.
 7 position of the loudest / quietest sounding instrument (>= LOUD_DB from all others).
 8 yes iff the first (last) instrument to start sounding is the visible one at <LR>.
 9 the other instrument type whose sound overlaps the <Object>'s (>= 2 s; the only one, or
   twice the overlap of the next).
10 the instrument at <LR> among those that start sounding first (last), i.e. within
   SIMULTANEOUS_S of the earliest (latest) onset.
11/13 yes iff the instrument at the first <LR> has an onset rate >= 1.5x and >= 0.75/s more
   than the one at the second; no for the converse (skipped in between).
12/14 yes iff louder by >= LOUD_DB; no if quieter by >= LOUD_DB.
15 position of the instrument that starts sounding first (last).
16 for two visible, sounding <Object>s: the position of the one that starts first (last), or
   "simultaneously" when their onsets are within SIMULTANEOUS_S.
17 the type of the <TH> instrument to start sounding.
18 the type of the instrument that starts sounding right before (after) the <Object>.
19 yes iff an <Object> is visible.       20 yes iff both are visible.
21 number of visible types.              22 number of visible <Object>s.
23 indoor / outdoor.
24 the type of the nearest visible instrument on the <LR> side of the <Object>.
25 the type of the only visible instrument.
26 the type of the leftmost (rightmost) visible instrument.
27 yes iff an <Object> is heard.         28 yes iff both are heard.
29 number of instruments heard (visible or not).
30/31 as 11/12 for two instrument types.
32 yes iff the first sounds >= LONGER_S longer in total than the second; no if >= LONGER_S
   shorter.
"Start sounding" is the start of an instrument's first span; "first"/"last" rank those
onsets, and need the runner-up ORDER_GAP_S away.
"""

import argparse
import glob
import json
import os
import random
import sys

ANSWERS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "answers.txt")

# (text exactly as in src/prompts.rs, [modality, kind]) in template-id order.
TEMPLATES = [
    ("Is this sound from the instrument in the video?", ["Audio-Visual", "Existential"]),
    ("Is the <Object> in the video always playing?", ["Audio-Visual", "Existential"]),
    ("Is there a voiceover?", ["Audio-Visual", "Existential"]),
    ("How many instruments are sounding in the video?", ["Audio-Visual", "Counting"]),
    ("How many types of musical instruments sound in the video?", ["Audio-Visual", "Counting"]),
    ("How many instruments in the video did not sound from beginning to end?", ["Audio-Visual", "Counting"]),
    ("How many sounding <Object> in the video?", ["Audio-Visual", "Counting"]),
    ("Where is the <LL> instrument?", ["Audio-Visual", "Location"]),
    ("Is the <FL> sound coming from the <LR> instrument?", ["Audio-Visual", "Location"]),
    ("Which is the musical instrument that sounds at the same time as the <Object>?", ["Audio-Visual", "Location"]),
    ("What is the <LR> instrument of the <FL> sounding instrument?", ["Audio-Visual", "Location"]),
    ("Is the instrument on the <LR> more rhythmic than the instrument on the <LR>?", ["Audio-Visual", "Comparative"]),
    ("Is the instrument on the <LR> louder than the instrument on the <LR>?", ["Audio-Visual", "Comparative"]),
    ("Is the <Object> on the <LR> more rhythmic than the <Object> on the <LR>?", ["Audio-Visual", "Comparative"]),
    ("Is the <Object> on the <LR> louder than the <Object> on the <LR>?", ["Audio-Visual", "Comparative"]),
    ("Where is the <FL> sounding instrument?", ["Audio-Visual", "Temporal"]),
    ("Which <Object> makes the sound <FL>?", ["Audio-Visual", "Temporal"]),
    ("What is the <TH> instrument that comes in?", ["Audio-Visual", "Temporal"]),
    ("Which instrument makes sounds <BA> the <Object>?", ["Audio-Visual", "Temporal"]),
    ("Is there a <Object> in the entire video?", ["Visual", "Counting"]),
    ("Are there <Object> and <Object> instruments in the video?", ["Visual", "Counting"]),
    ("How many types of musical instruments appeared in the entire video?", ["Visual", "Counting"]),
    ("How many <Object> are in the entire video?", ["Visual", "Counting"]),
    ("Where is the performance?", ["Visual", "Location"]),
    ("What is the instrument on the <LR> of <Object>?", ["Visual", "Location"]),
    ("What kind of musical instrument is it?", ["Visual", "Location"]),
    ("What kind of instrument is the <LRer> instrument?", ["Visual", "Location"]),
    ("Is there a <Object> sound?", ["Audio", "Counting"]),
    ("Are there <Object> and <Object> sound?", ["Audio", "Counting"]),
    ("How many musical instruments were heard throughout the video?", ["Audio", "Counting"]),
    ("Is the <Object> more rhythmic than the <Object>?", ["Audio", "Comparative"]),
    ("Is the <Object> louder than the <Object>?", ["Audio", "Comparative"]),
    ("Is the <Object> playing longer than the <Object>?", ["Audio", "Comparative"]),
]

INSTRUMENTS = ["accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello", "clarinet",
               "congas", "drum", "electric_bass", "erhu", "flute", "guzheng", "piano", "pipa",
               "saxophone", "suona", "trumpet", "tuba", "ukulele", "violin", "xylophone"]
POSITIONS = ["left", "middle", "right"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ORDINALS = ["first", "second", "third", "fourth", "fifth"]

LOUD_DB = 6.0            # loudness comparisons need this margin (dB, RMS over the spans)
RHYTHM_RATIO = 1.5       # onset-rate comparisons need this ratio ...
RHYTHM_DIFF_HZ = 0.75    # ... and this difference (onsets per second)
ORDER_GAP_S = 1.5        # "first"/"before" need the next onset this far away
SIMULTANEOUS_S = 0.3     # onsets this close count as together
OVERLAP_S = 2.0          # "at the same time" needs this much overlap
LONGER_S = 3.0           # "playing longer" needs this margin (total sounding seconds)
ALWAYS_YES, ALWAYS_NO = 0.95, 0.75


def number(n):
    return NUMBERS[n] if n <= 10 else "more than ten"


def load_answers(path=ANSWERS_FILE):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


# ---------------------------------------------------------------- scene helpers

class Scene:
    def __init__(self, gt):
        self.gt = gt
        self.dur = float(gt["duration_s"])
        self.objs = gt["objects"]
        self.vis = sorted([o for o in self.objs if o["visible"]], key=lambda o: POSITIONS.index(o["position"]))
        self.aud = [o for o in self.objs if o["audible"] and o["spans"]]
        self.va = [o for o in self.vis if o in self.aud]

    @staticmethod
    def onset(o):
        return o["spans"][0][0]

    @staticmethod
    def sounding(o):
        return sum(b - a for a, b in o["spans"])

    def of_type(self, objs, t):
        return [o for o in objs if o["instrument"] == t]

    def unique(self, objs, t):
        """The only instance of type t in objs, or None."""
        found = self.of_type(objs, t)
        return found[0] if len(found) == 1 else None

    def at(self, pos):
        found = [o for o in self.vis if o["position"] == pos]
        return found[0] if found else None

    def types(self, objs):
        return sorted({o["instrument"] for o in objs})

    def coverage(self, spans_list):
        cover = [False] * int(round(self.dur * 10))
        for spans in spans_list:
            for a, b in spans:
                for i in range(int(round(a * 10)), min(len(cover), int(round(b * 10)))):
                    cover[i] = True
        return sum(cover) / max(1, len(cover))

    def ordered(self):
        return sorted(self.aud, key=self.onset)

    def extreme_onset(self, which):
        """The instrument that starts sounding first/last, if the runner-up is ORDER_GAP_S away."""
        order = self.ordered()
        if len(order) < 2:
            return order[0] if order and which == "first" else None
        if which == "first" and self.onset(order[1]) - self.onset(order[0]) >= ORDER_GAP_S:
            return order[0]
        if which == "last" and self.onset(order[-1]) - self.onset(order[-2]) >= ORDER_GAP_S:
            return order[-1]
        return None


def compare(a, b, margin, ratio=None):
    """'yes' if a clearly exceeds b, 'no' if b clearly exceeds a, None when unclear."""
    def clearly(x, y):
        return x - y >= margin and (ratio is None or x >= ratio * max(y, 1e-9))
    if clearly(a, b):
        return "yes"
    if clearly(b, a):
        return "no"
    return None


def rhythm(a, b):
    return compare(a["onset_rate_hz"], b["onset_rate_hz"], RHYTHM_DIFF_HZ, RHYTHM_RATIO)


def louder(a, b):
    return compare(a["loudness_db"], b["loudness_db"], LOUD_DB)


def overlap(a, b):
    return sum(max(0.0, min(b1, b2) - max(a1, a2)) for a1, b1 in a["spans"] for a2, b2 in b["spans"])


# ---------------------------------------------------------------- candidates per template
# Each returns [(templ_values, answer)] for one scene; `absent` are instrument types to use
# as negatives (chosen per clip by the caller).

def candidates(s, tid, absent):
    out = []
    add = lambda values, ans: out.append((list(values), ans)) if ans is not None else None  # noqa: E731
    if tid == 0 and s.aud:
        add([], "yes" if all(o["visible"] for o in s.aud) else "no")
    elif tid == 1:
        for t in s.types(s.vis):
            cov = s.coverage([o["spans"] for o in s.of_type(s.objs, t)])
            add([t], "yes" if cov >= ALWAYS_YES else "no" if cov <= ALWAYS_NO else None)
    elif tid == 2:
        add([], "yes" if s.gt["voiceover"]["present"] else "no")
    elif tid == 3 and s.vis:
        add([], number(len(s.va)))
    elif tid == 4 and s.vis:
        add([], number(len(s.types(s.va))))
    elif tid == 5 and s.vis:
        add([], number(len([o for o in s.vis if o not in s.aud])))
    elif tid == 6:
        for t in s.types(s.vis + s.aud) + absent[:1]:
            add([t], number(len(s.of_type(s.va, t))))
    elif tid == 7 and len(s.aud) >= 2:
        ranked = sorted(s.aud, key=lambda o: o["loudness_db"])
        lo, hi = ranked[0], ranked[-1]
        if hi["visible"] and hi["loudness_db"] - ranked[-2]["loudness_db"] >= LOUD_DB:
            add(["loudest"], hi["position"])
        if lo["visible"] and ranked[1]["loudness_db"] - lo["loudness_db"] >= LOUD_DB:
            add(["lowest"], lo["position"])
    elif tid in (8, 15) and len(s.aud) >= 2:
        for fl in ("first", "last"):
            o = s.extreme_onset(fl)
            if o is None:
                continue
            if tid == 15:
                add([fl], o["position"] if o["visible"] else None)
            else:
                for v in s.vis:
                    add([fl, v["position"]], "yes" if v is o else "no")
    elif tid == 9:
        for t in s.types(s.aud):
            me = s.unique(s.aud, t)
            if me is None:
                continue
            others = {}
            for o in s.aud:
                if o["instrument"] != t:
                    others[o["instrument"]] = others.get(o["instrument"], 0.0) + overlap(me, o)
            best = sorted(others.items(), key=lambda kv: -kv[1])
            if best and best[0][1] >= OVERLAP_S and (len(best) == 1 or best[0][1] >= 2 * best[1][1]):
                add([t], best[0][0])
    elif tid == 10 and len(s.aud) >= 2:
        order = s.ordered()
        t0, t1 = s.onset(order[0]), s.onset(order[-1])
        groups = {"first": [o for o in order if s.onset(o) - t0 <= SIMULTANEOUS_S],
                  "last": [o for o in order if t1 - s.onset(o) <= SIMULTANEOUS_S]}
        for fl, group in groups.items():
            rest = [o for o in order if o not in group]
            if not rest:
                continue
            gap = (min(s.onset(o) for o in rest) - t0) if fl == "first" else (t1 - max(s.onset(o) for o in rest))
            if gap < ORDER_GAP_S:
                continue
            for o in group:
                if o["visible"]:
                    add([o["position"], fl], o["instrument"])
    elif tid in (11, 12, 13, 14):
        for a in s.va:
            for b in s.va:
                if a is b:
                    continue
                ans = rhythm(a, b) if tid in (11, 13) else louder(a, b)
                if tid in (11, 12):
                    add([a["position"], b["position"]], ans)
                else:
                    add([a["instrument"], a["position"], b["instrument"], b["position"]], ans)
    elif tid == 16:
        for t in s.types(s.va):
            same = s.of_type(s.va, t)
            if len(same) != 2:
                continue
            a, b = sorted(same, key=s.onset)
            d = s.onset(b) - s.onset(a)
            for fl in ("first", "last"):
                if d <= SIMULTANEOUS_S:
                    add([t, fl], "simultaneously")
                elif d >= ORDER_GAP_S:
                    add([t, fl], (a if fl == "first" else b)["position"])
    elif tid == 17:
        order = s.ordered()
        on = [s.onset(o) for o in order]
        for k in range(min(len(order), len(ORDINALS))):
            if (k == 0 or on[k] - on[k - 1] >= ORDER_GAP_S) and (k + 1 >= len(on) or on[k + 1] - on[k] >= ORDER_GAP_S):
                add([ORDINALS[k]], order[k]["instrument"])
    elif tid == 18:
        order = s.ordered()
        on = [s.onset(o) for o in order]
        for i, o in enumerate(order):
            if s.unique(s.aud, o["instrument"]) is None:
                continue
            if i >= 1 and on[i] - on[i - 1] >= ORDER_GAP_S and (i < 2 or on[i - 1] - on[i - 2] >= ORDER_GAP_S) \
                    and order[i - 1]["instrument"] != o["instrument"]:
                add(["before", o["instrument"]], order[i - 1]["instrument"])
            if i + 1 < len(order) and on[i + 1] - on[i] >= ORDER_GAP_S \
                    and (i + 2 >= len(order) or on[i + 2] - on[i + 1] >= ORDER_GAP_S) \
                    and order[i + 1]["instrument"] != o["instrument"]:
                add(["after", o["instrument"]], order[i + 1]["instrument"])
    elif tid == 19:
        seen = s.types(s.vis)
        for t in seen:
            add([t], "yes")
        # Negatives: heard-but-not-visible types first (the hard case), then absent ones.
        for t in [o["instrument"] for o in s.aud if o["instrument"] not in seen] + absent[:2]:
            add([t], "no")
    elif tid in (20, 28):
        pool = s.types(s.vis if tid == 20 else s.aud)
        other = [o["instrument"] for o in s.objs if o["instrument"] not in pool] + absent[:2]
        for i, a in enumerate(pool):
            for b in pool[i + 1:]:
                add([a, b], "yes")
            for b in other[:2]:
                add([a, b], "no")
                add([b, a], "no")
    elif tid == 21 and s.vis:
        add([], number(len(s.types(s.vis))))
    elif tid == 22:
        for t in s.types(s.vis) + absent[:1]:
            add([t], number(len(s.of_type(s.vis, t))))
    elif tid == 23:
        add([], s.gt["place"])
    elif tid == 24:
        for t in s.types(s.vis):
            me = s.unique(s.vis, t)
            if me is None:
                continue
            i = s.vis.index(me)
            if i > 0:
                add(["left", t], s.vis[i - 1]["instrument"])
            if i + 1 < len(s.vis):
                add(["right", t], s.vis[i + 1]["instrument"])
    elif tid == 25 and len(s.vis) == 1:
        add([], s.vis[0]["instrument"])
    elif tid == 26 and len(s.vis) >= 2:
        add(["leftest"], s.vis[0]["instrument"])
        add(["rightest"], s.vis[-1]["instrument"])
    elif tid == 27:
        heard = s.types(s.aud)
        for t in heard:
            add([t], "yes")
        for t in [o["instrument"] for o in s.vis if o["instrument"] not in heard] + absent[:2]:
            add([t], "no")
    elif tid == 29 and s.aud:
        add([], number(len(s.aud)))
    elif tid in (30, 31, 32):
        uniq = [o for o in s.aud if s.unique(s.aud, o["instrument"]) is o]
        for a in uniq:
            for b in uniq:
                if a is b:
                    continue
                if tid == 30:
                    ans = rhythm(a, b)
                elif tid == 31:
                    ans = louder(a, b)
                else:
                    ans = compare(s.sounding(a), s.sounding(b), LONGER_S)
                add([a["instrument"], b["instrument"]], ans)
    # De-duplicate (the same values can come from two routes).
    seen, uniq_out = set(), []
    for values, ans in out:
        key = tuple(values)
        if key not in seen:
            seen.add(key)
            uniq_out.append((values, ans))
    return uniq_out


def record(clip_id, qid, tid, values, answer):
    text, qtype = TEMPLATES[tid]
    return {"video_id": clip_id, "question_id": qid, "type": json.dumps(qtype),
            "question_content": text, "templ_values": json.dumps(values),
            "question_deleted": 0, "anser": answer, "clip_id": clip_id, "template_id": tid}


def questions_for_scene(gt, per_template=2, seed=7, first_id=0):
    """Question records for one ground-truth record: up to `per_template` per template,
    chosen to cover different answers (so a yes and a no where both exist)."""
    rng = random.Random(f"{seed}:{gt['clip_id']}")
    s = Scene(gt)
    present = {o["instrument"] for o in s.objs}
    absent = [t for t in INSTRUMENTS if t not in present]
    rng.shuffle(absent)
    out = []
    for tid in range(len(TEMPLATES)):
        cands = candidates(s, tid, absent)
        rng.shuffle(cands)
        picked, answers = [], set()
        for values, ans in cands:  # first pass: one per distinct answer
            if len(picked) < per_template and ans not in answers:
                picked.append((values, ans))
                answers.add(ans)
        for c in cands:
            if len(picked) < per_template and c not in picked:
                picked.append(c)
        for values, ans in picked:
            out.append(record(gt["clip_id"], first_id + len(out), tid, values, ans))
    return out


def load_ground_truth(dirs):
    gts = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            with open(path) as f:
                gt = json.load(f)
            if isinstance(gt, dict) and "objects" in gt and "clip_id" in gt:
                gts.append(gt)
    return gts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="directories with synth.py ground-truth records")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-template", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    vocab = set(load_answers())
    records = []
    for gt in load_ground_truth(args.dirs):
        records += questions_for_scene(gt, args.per_template, args.seed, len(records))
    bad = [r for r in records if r["anser"] not in vocab]
    if bad:
        sys.exit(f"questions: answers outside models/answers.txt: {bad[:3]}")
    with open(args.out + ".part", "w") as f:
        json.dump(records, f, indent=1)
    os.replace(args.out + ".part", args.out)
    by_type = {}
    for r in records:
        by_type[r["type"]] = by_type.get(r["type"], 0) + 1
    print(f"{len(records)} questions -> {args.out}", file=sys.stderr)
    for t, n in sorted(by_type.items()):
        print(f"  {t}: {n}", file=sys.stderr)


if __name__ == "__main__":
    main()
