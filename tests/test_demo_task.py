"""The demo's labelled task: deterministic, balanced, and each label means what it says (checked against the
corpus's own word lists, not the generator's bookkeeping)."""

import csv
import re

from flex_bert.data.demo_corpus import _CLINICAL, _CLINICAL_TEMPLATES, _FINANCE, _FINANCE_TEMPLATES
from flex_bert.data.demo_task import LABELS, write_demo_task


def corpus_words() -> set[str]:
    text = " ".join(_CLINICAL_TEMPLATES + _FINANCE_TEMPLATES)
    text += " " + " ".join(w for words in (_CLINICAL, _FINANCE) for ws in words.values() for w in ws)
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def test_demo_task_labels_mean_what_they_say(tmp_path):
    files = write_demo_task(tmp_path / "a", seed=3, train=90, test=30)
    again = write_demo_task(tmp_path / "b", seed=3, train=90, test=30)
    assert files["train"].read_bytes() == again["train"].read_bytes()
    with open(files["train"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == sorted(list(LABELS) * 30)
    known = corpus_words()
    for r in rows:
        unknown = [w for w in re.findall(r"[A-Za-z]+", r["text"]) if w.lower() not in known]
        assert (len(unknown) == 1) == (r["label"] == "misspelled"), r
        if r["label"] == "misspelled":
            assert any(sorted(unknown[0].lower()) == sorted(w) for w in known)  # the same letters, reordered
    # only originals read as a template filled with its own slots' words
    patterns = [template_regex(t, words) for t, words in templates()]
    for r in rows:
        fits = any(p.fullmatch(r["text"]) for p in patterns)
        assert fits == (r["label"] == "original"), r


def templates():
    return [(t, _CLINICAL) for t in _CLINICAL_TEMPLATES] + [(t, _FINANCE) for t in _FINANCE_TEMPLATES]


def template_regex(template: str, words: dict) -> re.Pattern:
    """{slot} -> any of that slot's words; number slots -> digits."""
    out, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        key, _, rest = tail.partition("}")
        out += [
            re.escape(head),
            "(" + "|".join(map(re.escape, words[key])) + ")" if key in words else r"[\d.]+",
        ]
    return re.compile("".join(out) + re.escape(rest), re.IGNORECASE)
