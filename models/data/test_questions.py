"""Tests of questions.py on hand-made scenes, and of its templates against src/prompts.rs.

    python3 -m pytest models/data/test_questions.py      or      python3 models/data/test_questions.py
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import questions as Q  # noqa: E402

PROMPTS_RS = os.path.join(HERE, "..", "..", "src", "prompts.rs")


def obj(instrument, position=None, spans=(), loud=-20.0, rate=2.0):
    o = {"instrument": instrument, "visible": position is not None, "position": position,
         "audible": bool(spans), "spans": [list(s) for s in spans]}
    if spans:
        o.update(loudness_db=loud, onset_rate_hz=rate)
    return o


def scene(objects, dur=20.0, voice=False, place="indoor", clip_id="hand"):
    return {"clip_id": clip_id, "duration_s": dur, "place": place, "objects": objects,
            "voiceover": {"present": voice}}


# Violin on the left from 0 s, loud and busy; piano in the middle from 5 s, quiet and slow;
# a drum on the right that never sounds; an erhu heard but not seen from 10 s.
A = scene([obj("violin", "left", [(0, 20)], loud=-12, rate=4.0),
           obj("piano", "middle", [(5, 20)], loud=-30, rate=1.0),
           obj("drum", "right"),
           obj("erhu", None, [(10, 16)], loud=-22, rate=2.0)], voice=True)
# Two violins (left, right) starting together, and one flute in the middle, outdoors.
B = scene([obj("violin", "left", [(0, 10)], loud=-20), obj("flute", "middle", [(0, 20)], loud=-21),
           obj("violin", "right", [(0.2, 10)], loud=-20)], place="outdoor", clip_id="b")
# One cello, alone.
C = scene([obj("cello", "middle", [(0, 20)], loud=-18)], clip_id="c")


def answers(gt, tid):
    return {tuple(v): a for v, a in Q.candidates(Q.Scene(gt), tid, ["tuba", "banjo"])}


def test_scene_a():
    assert answers(A, 0) == {(): "no"}                  # the erhu is not in the picture
    assert answers(A, 1) == {("violin",): "yes", ("piano",): "no", ("drum",): "no"}
    assert answers(A, 2) == {(): "yes"}
    assert answers(A, 3) == {(): "two"}
    assert answers(A, 4) == {(): "two"}
    assert answers(A, 5) == {(): "one"}
    a6 = answers(A, 6)
    assert a6[("violin",)] == "one" and a6[("drum",)] == "zero" and a6[("erhu",)] == "zero"
    assert answers(A, 7) == {("loudest",): "left", ("lowest",): "middle"}
    a8 = answers(A, 8)
    assert a8[("first", "left")] == "yes" and a8[("first", "middle")] == "no"
    assert a8[("last", "left")] == "no"                 # the erhu (hidden) comes in last
    assert answers(A, 15) == {("first",): "left"}
    assert answers(A, 10) == {("left", "first"): "violin"}
    assert answers(A, 12) == {("left", "middle"): "yes", ("middle", "left"): "no"}
    assert answers(A, 11) == {("left", "middle"): "yes", ("middle", "left"): "no"}
    assert answers(A, 14)[("violin", "left", "piano", "middle")] == "yes"
    assert answers(A, 17) == {("first",): "violin", ("second",): "piano", ("third",): "erhu"}
    a18 = answers(A, 18)
    assert a18[("after", "violin")] == "piano" and a18[("before", "erhu")] == "piano"
    assert a18[("before", "piano")] == "violin"
    a19 = answers(A, 19)
    assert a19[("drum",)] == "yes" and a19[("erhu",)] == "no" and a19[("tuba",)] == "no"
    a20 = answers(A, 20)
    assert a20[("drum", "piano")] == "yes" and a20[("piano", "erhu")] == "no"
    assert answers(A, 21) == {(): "three"}
    assert answers(A, 23) == {(): "indoor"}
    assert answers(A, 24) == {("right", "violin"): "piano", ("left", "piano"): "violin",
                              ("right", "piano"): "drum", ("left", "drum"): "piano"}
    assert answers(A, 25) == {}
    assert answers(A, 26) == {("leftest",): "violin", ("rightest",): "drum"}
    a27 = answers(A, 27)
    assert a27[("erhu",)] == "yes" and a27[("drum",)] == "no" and a27[("tuba",)] == "no"
    assert answers(A, 29) == {(): "three"}
    a31 = answers(A, 31)
    assert a31[("violin", "piano")] == "yes" and a31[("piano", "violin")] == "no"
    assert ("violin", "erhu") in a31 and ("erhu", "piano") in a31
    a32 = answers(A, 32)
    assert a32[("violin", "piano")] == "yes" and a32[("piano", "erhu")] == "yes"
    # 9: the erhu overlaps both; the piano overlaps the violin most, but not twice the erhu.
    assert answers(A, 9) == {("erhu",): "piano"} or answers(A, 9).get(("erhu",)) is None


def test_scene_b():
    assert answers(B, 16) == {("violin", "first"): "simultaneously", ("violin", "last"): "simultaneously"}
    assert answers(B, 22)[("violin",)] == "two"
    assert answers(B, 6)[("violin",)] == "two"
    assert answers(B, 23) == {(): "outdoor"}
    assert answers(B, 7) == {}                          # within 6 dB: not asked
    assert answers(B, 15) == {}                         # all start together: not asked
    assert answers(B, 9) == {("flute",): "violin"}
    assert answers(B, 0) == {(): "yes"}
    assert answers(B, 2) == {(): "no"}
    assert answers(B, 24) == {("left", "flute"): "violin", ("right", "flute"): "violin"}
    assert answers(B, 30) == {}                         # violin is not unique


def test_scene_c():
    assert answers(C, 25) == {(): "cello"}
    assert answers(C, 26) == {}
    assert answers(C, 17) == {("first",): "cello"}
    assert answers(C, 1) == {("cello",): "yes"}
    assert answers(C, 29) == {(): "one"}


def test_every_answer_in_vocabulary_and_all_types_covered():
    vocab = set(Q.load_answers())
    assert len(vocab) == 42
    recs = []
    for gt in (A, B, C):
        recs += Q.questions_for_scene(gt, per_template=3)
    assert all(r["anser"] in vocab for r in recs), [r for r in recs if r["anser"] not in vocab]
    types = {r["type"] for r in recs}
    assert len(types) == 9, types
    for r in recs:
        values = json.loads(r["templ_values"])
        assert r["question_content"].count("<") == len(values)


def rust_templates():
    """The template texts and types of src/prompts.rs's TEMPLATES table, in order."""
    src = open(PROMPTS_RS).read()
    table = src[src.index("static TEMPLATES"):]
    table = table[:table.index("];")]
    out = []
    for m in re.finditer(r'template\(\s*(\d+),\s*"((?:[^"\\]|\\.)*)",\s*&\[[^\]]*\],\s*(av|visual|audio)\((\w+)\)', table):
        modality = {"av": "Audio-Visual", "visual": "Visual", "audio": "Audio"}[m.group(3)]
        out.append((int(m.group(1)), m.group(2), [modality, m.group(4)]))
    return out


def test_templates_match_prompts_rs():
    rust = rust_templates()
    assert len(rust) == 33
    for (rid, text, qtype), (mine, mytype) in zip(rust, Q.TEMPLATES):
        assert (text, qtype) == (mine, mytype), rid
    for gt in (A, B, C):
        for r in Q.questions_for_scene(gt, per_template=5):
            assert r["question_content"] == rust[r["template_id"]][1]
            assert json.loads(r["type"]) == rust[r["template_id"]][2]


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print(f"ok {name}")
