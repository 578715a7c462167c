"""environment.yaml installs the tested set: requirements/lock.txt's versions and Python, and composer and
streaming (--no-deps, in its header's steps)."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_environment_yaml_names_the_locks_versions():
    text = (ROOT / "environment.yaml").read_text()
    env = yaml.safe_load(text)
    deps = env["dependencies"]
    lock_python = re.search(r"Python (\d+\.\d+)", (ROOT / "requirements" / "lock.txt").read_text()).group(1)
    assert f"python={lock_python}" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    pinned = dict(p.split("==") for p in pip)
    lock = _lock()
    assert {**pinned, "composer": lock["composer"], "mosaicml-streaming": lock["mosaicml-streaming"]} == lock
    header = [line for line in text.splitlines() if line.startswith("#")]
    no_deps = (
        f"pip install --no-deps composer=={lock['composer']} mosaicml-streaming=={lock['mosaicml-streaming']}"
    )
    assert any(no_deps in line for line in header), "the header installs composer and streaming without pins"


def test_environment_yaml_is_up_to_date_with_its_generator():
    r = subprocess.run(
        [sys.executable, str(ROOT / "requirements" / "environment_yaml.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
