"""folder_lock: one holder per folder, a second is refused naming the first; a dead holder frees it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flex_bert.folder_lock import LOCK_NAME, folder_lock

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the lock and then waits to be killed."""
    code = (
        "import sys, time\nfrom flex_bert.folder_lock import folder_lock\n"
        f"with folder_lock({str(folder)!r}, what='data conversion'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "out"
    proc = _holder(folder)
    try:
        refused = rf"in use by another data conversion \(pid {proc.pid} on host"
        with pytest.raises(ValueError, match=refused), folder_lock(folder, what="data conversion"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with folder_lock(folder) as lock_file:  # the OS released the dead holder's lock
        assert lock_file == folder / LOCK_NAME
        assert f"pid {os.getpid()}" in lock_file.read_text()


def test_lock_is_released_on_exit_and_refused_within_one_process(tmp_path):
    folder = tmp_path / "new" / "folder"
    with folder_lock(folder):  # noqa: SIM117 (a missing folder is created)
        with pytest.raises(ValueError, match="in use by another training run"), folder_lock(folder):
            pass
    start = time.monotonic()
    with folder_lock(folder):
        pass
    assert time.monotonic() - start < 1
    assert (folder / LOCK_NAME).read_text() == ""  # no holder named after release
