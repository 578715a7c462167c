"""A small labelled task made from the demo corpus's templates, for the demo's ablation step.

Each example is one sentence of the corpus's kind, labelled by what was done to it:
- `original`: filled as the corpus fills it;
- `misspelled`: two neighbouring inner letters of one word exchanged ("metorpolol");
- `swapped_slot`: one slot holds a word of another slot of the same domain ("Started chest pain 25 mg
  twice daily.": a symptom where a drug belongs).
Telling them apart takes what masked-language modelling teaches (how words are spelled in pieces, which words
fit which context): with the demo's recipe (yamls/demo/finetune.yml, 900 sentences) the test macro-F1 was about
0.68 from the step-0 stand-in, 0.73 after phase 1 and 0.74 after phase 2 (3 seeds, one CPU run). Deterministic:
same arguments, same bytes.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

from flex_bert.data.demo_corpus import _CLINICAL, _CLINICAL_TEMPLATES, _FINANCE, _FINANCE_TEMPLATES, _fill

LABELS = ("original", "misspelled", "swapped_slot")
_DOMAINS = {"clinical": (_CLINICAL_TEMPLATES, _CLINICAL), "finance": (_FINANCE_TEMPLATES, _FINANCE)}


def _word_slots(template: str, words: dict[str, list[str]]) -> list[tuple[int, str]]:
    """(start, name) of each `{name}` in the template that is filled with words (not numbers)."""
    return [(m.start(), m.group(1)) for m in re.finditer(r"\{(\w+)\}", template) if m.group(1) in words]


def _swap(rng: random.Random, words: dict[str, list[str]], slot: str) -> str:
    """A word of another slot of the same domain, one the slot itself never takes."""
    other = rng.choice([k for k in words if k != slot and not set(words[k]) & set(words[slot])])
    return rng.choice(words[other])


def _misspell(rng: random.Random, text: str) -> str:
    """Two neighbouring inner letters of one word of 5 letters or more exchanged ("metoprolol" -> "metorpolol")."""
    words = [m for m in re.finditer(r"[A-Za-z]{5,}", text)]
    rng.shuffle(words)
    for m in words:  # exchanging equal letters would change nothing
        inner = [i for i in range(m.start() + 1, m.end() - 2) if text[i] != text[i + 1]]
        if inner:
            i = rng.choice(inner)
            return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    raise ValueError(f"no word to misspell in {text!r}")


def sentence(rng: random.Random, domain: str, label: str) -> str:
    templates, words = _DOMAINS[domain]
    template = rng.choice([t for t in templates if _word_slots(t, words)])
    if label == "swapped_slot":
        start, slot = rng.choice(_word_slots(template, words))
        template = template[:start] + _swap(rng, words, slot) + template[start + len(slot) + 2 :]
    text = _fill(rng, template, words)
    return _misspell(rng, text) if label == "misspelled" else text


def write_demo_task(out_dir: str | Path, seed: int = 0, train: int = 900, test: int = 150) -> dict[str, Path]:
    """`train.csv` and `test.csv` (columns `text`, `label`), classes balanced, domains mixed.

    Returns {"train": path, "test": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", train), ("test", test)):
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                label = LABELS[i % len(LABELS)]
                writer.writerow([sentence(rng, rng.choice(list(_DOMAINS)), label), label])
    return paths
