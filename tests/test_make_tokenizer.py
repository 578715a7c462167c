"""scripts/make_tokenizer.py trains a ModernBERT-shaped tokenizer offline that transformers loads."""

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_tokenizer_from_a_csv(tmp_path):
    from transformers import AutoTokenizer

    texts = tmp_path / "notes.csv"
    with texts.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for i in range(200):
            w.writerow([f"patient {i} was given aspirin and felt better after {i % 7} days in hospital"])
    out = tmp_path / "tok"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    args = [
        sys.executable,
        str(ROOT / "scripts" / "make_tokenizer.py"),
        "--texts",
        str(texts),
        "--out",
        str(out),
    ]
    r = subprocess.run([*args, "--vocab-size", "300"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) <= 300
    ids = tok("patient was given aspirin")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids[1:-1]) == "patient was given aspirin"
    assert {tok.mask_token, tok.pad_token, tok.unk_token} == {"[MASK]", "[PAD]", "[UNK]"}

    bad = subprocess.run(
        [*args[:-2], "--out", str(tmp_path / "x"), "--texts", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "nope.csv" in bad.stderr and "Traceback" not in bad.stderr
