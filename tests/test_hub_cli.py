"""The download commands as the seed guides write them (`huggingface-cli download ...`) and as huggingface_hub
writes them today (`hf download ...`) both run: `make` installs a `huggingface-cli` that forwards to `hf`."""

import subprocess
import sys
from pathlib import Path

import pytest

from flex_bert.hub_cli import hf_arguments

BIN = Path(sys.executable).parent


def _run(command: str, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / command
    assert exe.exists(), f"{exe} is missing: run `make` (pip install -e .) to install the console scripts"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": str(BIN)},
    )


@pytest.mark.parametrize("command", ["hf", "huggingface-cli"])
def test_download_command_runs_under_both_names(command):
    out = _run(command, "download", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--include", "--local-dir", "REPO_ID"):
        assert flag in out.stdout


def test_old_name_says_it_forwards():
    out = _run("huggingface-cli", "--help")
    assert out.returncode == 0, out.stderr
    assert "download" in out.stdout
    assert "huggingface-cli is now called hf" in out.stderr


def test_account_commands_moved_under_auth():
    assert hf_arguments(["login", "--token", "x"]) == ["auth", "login", "--token", "x"]
    assert hf_arguments(["whoami"]) == ["auth", "whoami"]
    assert hf_arguments(["download", "a/b", "--include", "x"]) == ["download", "a/b", "--include", "x"]
