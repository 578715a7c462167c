"""Silence streaming's log lines that describe its own internals, which a user cannot act on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

# (logger, start of the message): streaming logs these on every merge and on writers of a non-empty folder.
_INTERNAL = (
    ("", "A temporary folder "),  # util.merge_index, through the root logger
    ("streaming.base.storage.upload", "Directory "),  # "... exists and not empty. But continue to mkdir ..."
)


class _DropInternal(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextmanager
def quiet_streaming() -> Iterator[None]:
    """Within the block, drop streaming's internal log lines (everything else it logs still shows)."""
    filters = [(logging.getLogger(name), _DropInternal(prefix)) for name, prefix in _INTERNAL]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
