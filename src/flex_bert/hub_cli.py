"""``huggingface-cli``, as the seed guides write it, forwarding to huggingface_hub's ``hf``.

huggingface_hub 1.0 removed the old command name; ``hf`` takes the same sub-commands and flags
(``download REPO --include ... --local-dir ...``), except that the account commands moved under ``hf auth``.
"""

from __future__ import annotations

import sys

_MOVED = {"login": ["auth", "login"], "logout": ["auth", "logout"], "whoami": ["auth", "whoami"]}


def hf_arguments(argv: list[str]) -> list[str]:
    """The ``hf`` arguments for a ``huggingface-cli`` command line."""
    if argv and argv[0] in _MOVED:
        return _MOVED[argv[0]] + argv[1:]
    return list(argv)


def main() -> None:
    from huggingface_hub.cli.hf import main as hf_main

    args = hf_arguments(sys.argv[1:])
    print(f"note: huggingface-cli is now called hf; running: hf {' '.join(args)}", file=sys.stderr)
    sys.argv = ["hf", *args]
    sys.exit(hf_main())
