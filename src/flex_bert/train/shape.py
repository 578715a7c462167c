"""The run's shape, derived once from the config: what the builders need besides their own section.

A training row is ``device_train_microbatch_size`` slots of ``max_seq_len`` tokens (one packed row per
micro-batch), so a global batch is ``global_train_batch_size / device_train_microbatch_size`` rows, which must
split evenly over the GPUs; an evaluation batch is a number of documents per GPU. ``save_folder`` has composer's ``{run_name}`` filled, as every reader of it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from composer.utils import dist


def fill_run_name(path: str | None, run_name: str) -> str | None:
    """A path with composer's ``{run_name}`` placeholder filled (composer fills it in its own paths only)."""
    return path.format(run_name=run_name) if path else None


@dataclass(frozen=True)
class RunShape:
    run_name: str
    save_folder: str | None  # {run_name} filled
    precision: str
    max_seq_len: int  # the training documents' longest, in tokens (train_loader.dataset.max_seq_len)
    slots_per_row: int  # device_train_microbatch_size: max_seq_len slots in one packed row
    rows_per_global_batch: int
    world_size: int
    eval_batch_size: int  # documents per GPU and evaluation batch

    @property
    def row_len(self) -> int:
        return self.slots_per_row * self.max_seq_len

    @property
    def rows_per_device(self) -> int:
        return self.rows_per_global_batch // self.world_size


def run_shape(cfg) -> RunShape:
    """The shape of ``cfg``'s run on this job's GPUs; a batch that does not split evenly is one line."""
    world, micro, batch = dist.get_world_size(), cfg.device_train_microbatch_size, cfg.global_train_batch_size
    if batch % (micro * world):
        raise ValueError(
            f"global_train_batch_size ({batch}) must be a multiple of device_train_microbatch_size ({micro}) "
            f"x the number of GPUs ({world})"
        )
    return RunShape(
        run_name=cfg.run_name,
        save_folder=fill_run_name(cfg.save_folder, cfg.run_name),
        precision=cfg.precision,
        max_seq_len=cfg.train_loader.dataset.max_seq_len,
        slots_per_row=micro,
        rows_per_global_batch=batch // micro,
        world_size=world,
        eval_batch_size=eval_batch_size(cfg, world),
    )


def eval_batch_size(cfg, world: int) -> int:
    """device_eval_batch_size, else global_eval_batch_size / GPUs (as upstream), else 32."""
    if cfg.device_eval_batch_size is not None:
        return cfg.device_eval_batch_size
    return max(1, cfg.global_eval_batch_size // world) if cfg.global_eval_batch_size else 32
