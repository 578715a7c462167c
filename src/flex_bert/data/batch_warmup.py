"""Upstream ModernBERT's batch-size warmup: the packed rows of a batch grow from a minimum to the full batch.

Per device, as upstream's sequence packer counts it: the batch holds ``min_rows`` rows at first and one row more
at each threshold of real (non-padding) tokens trained, up to ``max_rows`` once ``tokens`` have passed. The
thresholds give each size a share of the warmup proportional to its rows, so each size lasts about the same
number of steps. The learning-rate schedule and composer's token count are unaffected: only the batch shrinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class BatchSizeWarmup:
    min_rows: int  # rows per device at the start
    max_rows: int  # rows per device of the full batch
    tokens: int  # real tokens per device over which the batch grows

    @cached_property
    def thresholds(self) -> list[int]:
        """Token counts at which the batch grows past min_rows, min_rows + 1, ..., max_rows - 1 rows."""
        sizes = range(self.min_rows, self.max_rows)
        per_row = self.tokens / sum(sizes)
        return [math.ceil(per_row * (self.min_rows * (i + 1) + i * (i + 1) // 2)) for i in range(len(sizes))]

    def rows(self, tokens_so_far: int) -> int:
        """Rows per device of the next batch, after ``tokens_so_far`` real tokens per device."""
        if tokens_so_far >= self.tokens:
            return self.max_rows
        for i, threshold in enumerate(self.thresholds):
            if tokens_so_far < threshold:
                return self.min_rows + i
        return self.max_rows
