import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, this package's Triton kernels run in Triton's interpreter (tests/test_fused_norm.py). It is
    # chosen when triton is imported, so here, before any test module imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests never reach the network or the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without a GPU, and `interpreter` tests where Triton's interpreter is off (set above: off
    with a GPU, where the gpu tests run the kernels compiled)."""
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = "needs CUDA (run on the device machine)"
    if os.environ.get("TRITON_INTERPRET") != "1":
        skips["interpreter"] = "Triton's interpreter is off (a GPU is present: the gpu tests run the kernels)"
    for item in items:
        for marker, reason in skips.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=[False, True], ids=["one-pass", "split"])
def backward_path(request):
    """The band kernel's two backwards: one pass with atomic dQ (default), and the split, atomic-free one that
    `torch.use_deterministic_algorithms(True)` selects."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)


@pytest.fixture(autouse=True)
def release_streaming_shared_memory(monkeypatch):
    """Free the shared memory of the StreamingDatasets a test created, when the test ends.

    streaming registers every SharedMemory's cleanup with ``atexit``, which keeps it (and its file
    descriptor) alive until the process exits: ~400 descriptors per StreamingDataset, which exhausted the
    open-file limit (20,000) within one pytest process. A training run creates two datasets, so this
    matters to the test suite only.
    """
    import atexit

    import streaming.base.shared.memory as memory

    registered = []

    class RecordingAtexit:
        @staticmethod
        def register(fn, *args, **kwargs):
            registered.append(fn)
            return atexit.register(fn, *args, **kwargs)

    monkeypatch.setattr(memory, "atexit", RecordingAtexit)
    yield
    import gc

    gc.collect()  # datasets a failed test's traceback kept alive
    for fn in registered:
        atexit.unregister(fn)
        try:
            fn()
        except (BufferError, OSError):  # still in use: left to streaming's exit handler
            atexit.register(fn)
