"""Write environment.yaml from requirements/lock.txt, so that conda installs the same tested set as `make`.

    python requirements/environment_yaml.py           # rewrite environment.yaml (`make lock` runs this)
    python requirements/environment_yaml.py --check   # exit 1 if environment.yaml is out of date

composer and mosaicml-streaming are left out of conda's pip step (their metadata pins torch < 2.7.1): the
YAML's header installs them with --no-deps, as `make` does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_DEPS = ("composer", "mosaicml-streaming")


def lock_pins() -> dict[str, str]:
    """name -> version, in the lock's order."""
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def lock_python() -> str:
    return re.search(r"Python (\d+\.\d+)", (ROOT / "requirements" / "lock.txt").read_text()).group(1)


def environment_yaml() -> str:
    pins = lock_pins()
    no_deps = " ".join(f"{n}=={pins[n]}" for n in NO_DEPS)
    lines = [
        "# Generated from requirements/lock.txt by requirements/environment_yaml.py (`make lock`): the tested set.",
        "# From the repository root:",
        "#   conda env create -f environment.yaml && conda activate flexbert",
        f"#   pip install --no-deps {no_deps} && pip install --no-deps -e .",
        "# (composer and streaming pin torch < 2.7.1 in their metadata, so they go in without their pins, as `make`",
        '# installs them.) Optional: pip install -e ".[fa4]" for attention_backend: fa4 (Hopper / Blackwell).',
        "name: flexbert",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={lock_python()}",
        "  - pip",
        "  - pip:",
        *(f"      - {n}=={v}" for n, v in pins.items() if n not in NO_DEPS),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = ROOT / "environment.yaml"
    if "--check" in sys.argv:
        if path.read_text() != environment_yaml():
            sys.exit("environment.yaml is out of date: run python requirements/environment_yaml.py")
    else:
        path.write_text(environment_yaml())
