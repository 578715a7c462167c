"""A synthetic two-domain corpus and a tiny ModernBERT-shaped tokenizer, for tests and the offline demo.

Both are deterministic (same arguments, same bytes) and need no network.

- `write_demo_corpus(out_dir)` writes `clinical.csv` (column `notes`, like BioClinical's CSVs),
  `finance.csv` (column `text`) and `eval.csv` (column `text`, both domains). Sentences come from templates
  over a few hundred words, so a small MLM can learn them; documents vary from one sentence to well over 512
  tokens, and clinical notes contain commas, quotes and newlines (quoted CSV fields).
- `build_tiny_tokenizer(texts_or_files, out_dir)` trains a byte-level BPE with ModernBERT's special tokens
  and post-processor and saves it with `save_pretrained`, so `AutoTokenizer.from_pretrained(out_dir)` works.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")

_CLINICAL = {
    "sex": ["man", "woman", "male", "female", "patient"],
    "symptom": [
        "chest pain",
        "shortness of breath",
        "fever",
        "cough",
        "abdominal pain",
        "headache",
        "nausea",
        "dizziness",
        "back pain",
        "fatigue",
        "palpitations",
        "weakness",
        "syncope",
    ],
    "duration": ["two days", "three weeks", "one month", "several hours", "five days", "a week"],
    "history": [
        "hypertension",
        "diabetes",
        "asthma",
        "atrial fibrillation",
        "heart failure",
        "COPD",
        "chronic kidney disease",
        "hyperlipidemia",
        "depression",
        "obesity",
    ],
    "exam": ["Physical exam", "Cardiac exam", "Lung exam", "Abdominal exam", "Neurologic exam"],
    "finding": [
        "no acute distress",
        "clear lungs bilaterally",
        "a regular rate and rhythm",
        "mild tenderness",
        "trace edema",
        "no focal deficits",
        "crackles at the bases",
    ],
    "test": ["CBC", "BMP", "troponin", "chest x-ray", "ECG", "CT scan", "urinalysis", "lactate"],
    "result": ["unremarkable", "within normal limits", "mildly elevated", "negative", "pending"],
    "drug": [
        "aspirin",
        "metoprolol",
        "lisinopril",
        "metformin",
        "insulin",
        "heparin",
        "furosemide",
        "amoxicillin",
        "prednisone",
        "atorvastatin",
        "albuterol",
        "acetaminophen",
    ],
    "freq": ["daily", "twice daily", "every six hours", "as needed", "at bedtime"],
    "plan": [
        "follow up in clinic",
        "admit to telemetry",
        "continue current medications",
        "repeat labs in the morning",
        "consult cardiology",
        "discharge home",
        "monitor closely",
    ],
}
_CLINICAL_TEMPLATES = [
    "The patient is a {age}-year-old {sex} presenting with {symptom} for {duration}.",
    "History is notable for {history} and {history}.",
    '{exam} revealed {finding}; the patient reports "{symptom}" since {duration} ago.',
    "{test} was {result}, and {test} was {result}.",
    "Started {drug} {dose} mg {freq}.",
    "Home medications include {drug}, {drug}, and {drug}.",
    "Plan: {plan}.",
    "Assessment: {symptom}, likely related to {history}.",
    "Vital signs: temperature {temp}, heart rate {hr}, blood pressure {sbp}/{dbp}.",
]

_FINANCE = {
    "company": [
        "Acme Corp",
        "Globex",
        "Initech",
        "Umbrella Holdings",
        "Stark Industries",
        "Wayne Enterprises",
        "Hooli",
        "Vandelay Industries",
        "Soylent Group",
        "Cyberdyne Systems",
    ],
    "metric": [
        "revenue",
        "net income",
        "operating income",
        "free cash flow",
        "gross margin",
        "EBITDA",
        "earnings per share",
        "total assets",
        "long-term debt",
    ],
    "quarter": ["first", "second", "third", "fourth"],
    "direction": ["increased", "decreased", "remained flat", "grew", "declined"],
    "party": ["Borrower", "Lender", "Company", "Purchaser", "Seller", "Agent", "Licensee", "Guarantor"],
    "obligation": [
        "deliver written notice",
        "pay all outstanding amounts",
        "maintain adequate insurance",
        "provide audited financial statements",
        "cure such breach",
        "return all confidential information",
    ],
    "event": [
        "the closing date",
        "a change of control",
        "an event of default",
        "termination",
        "the effective date",
        "receipt of notice",
    ],
    "risk": [
        "interest rate risk",
        "credit risk",
        "liquidity risk",
        "cybersecurity incidents",
        "regulatory changes",
        "supply chain disruptions",
        "foreign exchange risk",
        "litigation",
    ],
    "segment": [
        "cloud services",
        "consumer products",
        "industrial equipment",
        "financial services",
        "healthcare",
    ],
}
_FINANCE_TEMPLATES = [
    "{company} reported {metric} of ${amount} million for the {quarter} quarter.",
    "Compared with the prior year, {metric} {direction} by {pct} percent.",
    "The {party} shall {obligation} within {days} days of {event}.",
    "Our business is subject to {risk} and {risk}.",
    "Revenue from {segment} {direction} due to higher demand and pricing.",
    "In the event of {event}, the {party} may terminate this Agreement upon {days} days notice.",
    "Management believes that {risk} could adversely affect our results of operations.",
    "{company} and {company} entered into a credit agreement of ${amount} million.",
]


def _fill(rng: random.Random, template: str, words: dict[str, list[str]]) -> str:
    numbers = {
        "age": rng.randint(18, 95),
        "dose": rng.choice([5, 10, 20, 25, 40, 50, 100, 500]),
        "temp": f"{rng.uniform(36.0, 39.5):.1f}",
        "hr": rng.randint(50, 130),
        "sbp": rng.randint(90, 180),
        "dbp": rng.randint(50, 110),
        "amount": f"{rng.uniform(1, 999):.1f}",
        "pct": rng.randint(1, 40),
        "days": rng.choice([5, 10, 15, 30, 60, 90]),
    }
    out, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        key, _, rest = tail.partition("}")
        out.append(head)
        out.append(str(numbers[key]) if key in numbers else rng.choice(words[key]))
    out.append(rest)
    text = "".join(out)
    return text[0].upper() + text[1:]


def _document(
    rng: random.Random,
    templates: list[str],
    words: dict[str, list[str]],
    n_sentences: int,
    paragraph_sep: str,
) -> str:
    sentences = [_fill(rng, rng.choice(templates), words) for _ in range(n_sentences)]
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    return paragraph_sep.join(paragraphs)


def _lengths(rng: random.Random, n: int, long_fraction: float) -> list[int]:
    """Sentence counts: mostly short documents, `long_fraction` of them long (well over 512 tokens)."""
    return [rng.randint(45, 120) if rng.random() < long_fraction else rng.randint(1, 20) for _ in range(n)]


def _write_csv(path: Path, column: str, documents: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column])
        for i, doc in enumerate(documents):
            writer.writerow([i, doc])


def write_demo_corpus(
    out_dir: str | Path,
    seed: int = 0,
    docs_per_domain: int = 200,
    eval_docs: int = 40,
    long_fraction: float = 0.1,
) -> dict[str, Path]:
    """Write `clinical.csv` (column `notes`), `finance.csv` (`text`) and `eval.csv` (`text`) under out_dir.

    Returns {"clinical": path, "finance": path, "eval": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    domains = {
        "clinical": (_CLINICAL_TEMPLATES, _CLINICAL, "\n\n"),
        "finance": (_FINANCE_TEMPLATES, _FINANCE, "\n"),
    }

    def docs(domain: str, n: int) -> Iterator[str]:
        templates, words, sep = domains[domain]
        for n_sentences in _lengths(rng, n, long_fraction):
            yield _document(rng, templates, words, n_sentences, sep)

    paths = {"clinical": out / "clinical.csv", "finance": out / "finance.csv", "eval": out / "eval.csv"}
    _write_csv(paths["clinical"], "notes", docs("clinical", docs_per_domain))
    _write_csv(paths["finance"], "text", docs("finance", docs_per_domain))
    eval_texts = [next(docs(rng.choice(["clinical", "finance"]), 1)) for _ in range(eval_docs)]
    _write_csv(paths["eval"], "text", eval_texts)
    return paths


def _training_texts(texts_or_files: Iterable[str | Path]) -> Iterator[str]:
    """Strings are texts; Path objects (or existing file names ending in a known extension) are read."""
    from flex_bert.data.sources import FORMATS, iter_dataset_texts

    for item in texts_or_files:
        if isinstance(item, Path) or (
            isinstance(item, str) and Path(item).suffix.lower() in FORMATS and Path(item).is_file()
        ):
            yield from iter_dataset_texts(str(item))
        else:
            yield item


def build_tiny_tokenizer(texts_or_files: Iterable[str | Path], out_dir: str | Path, vocab_size: int = 1024):
    """Train a byte-level BPE shaped like ModernBERT's and save it (loadable with AutoTokenizer, offline).

    Like ModernBERT's: NFC normalizer, ByteLevel pre-tokenizer without prefix space, special tokens
    [UNK] [CLS] [SEP] [PAD] [MASK] ([MASK] with lstrip), post-processor `[CLS] $A [SEP]`, ByteLevel decoder.
    Returns the loaded `PreTrainedTokenizerFast`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False, lstrip=(t == "[MASK]")) for t in SPECIAL_TOKENS]
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_texts(texts_or_files), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    from flex_bert.model.config import CONTEXT_LENGTH

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=CONTEXT_LENGTH,
    )
    fast.save_pretrained(str(out_dir))
    return fast


DEMO_DATASETS = (("train", "clinical"), ("train", "finance"), ("eval", "eval"))  # (split, dataset name)


def tokenize_demo_corpus(
    files: dict[str, Path],
    tokenizer: str | Path,
    out_dir: str | Path,
    max_seq_len: int,
    *,
    token_counts: bool = False,
    **convert_options,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """The corpus of `write_demo_corpus` -> `out_dir/{train,eval}/<name>` MDS folders (the converter, as
    data/convert_dataset_to_mds.py runs it), each split merge-indexed; `token_counts` also writes
    `out_dir/<split>/token_counts.txt`. Returns (conversion stats by dataset name, merge result by split)."""
    from .convert import ConvertConfig, convert_dataset
    from .merge import merge_datasets

    out = Path(out_dir)
    stats = {}
    for split, name in DEMO_DATASETS:
        cfg = ConvertConfig(
            dataset=str(files[name]),
            out_dir=str(out / split),
            tokenizer=str(tokenizer),
            max_seq_len=max_seq_len,
            progress=False,
            out_token_counts=str(out / split / "token_counts.txt") if token_counts else None,
            **convert_options,
        )
        stats[name] = convert_dataset(cfg)["train"]
    merged = {split: merge_datasets(out / split) for split in ("train", "eval")}
    return stats, merged
