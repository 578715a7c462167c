"""Each private part of composer (and torch) that flex_bert.train.composer_private reaches into still exists and
is still used the way that module relies on: a composer upgrade that moves one fails here, by name."""

import inspect

import torch
from composer import Trainer
from composer.loggers import WandBLogger
from composer.optim import scheduler as composer_schedulers
from composer.utils import checkpoint

from flex_bert.train import composer_private


def test_trainer_keeps_a_mid_epoch_rng_state_in_rng_state_and_restores_it_while_spinning():
    source = inspect.getsource(Trainer)
    assert "self._rng_state = checkpoint.load_checkpoint(" in source  # set from the loaded checkpoint
    assert "reproducibility.load_rng_state(self._rng_state)" in source  # restored (and cleared) in fit
    trainer = type("T", (), {"_rng_state": [{"python": 1}]})()
    assert composer_private.take_resumed_rng_state(trainer) == [{"python": 1}] and trainer._rng_state is None


def test_a_torch_lr_scheduler_reports_last_lr_from_last_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    composer_private.set_scheduler_lr(sched, 0.25)
    assert sched.base_lrs == [0.25] and sched.get_last_lr() == [0.25]


def test_every_checkpoint_write_goes_through_write_checkpoint_file():
    assert list(inspect.signature(checkpoint._write_checkpoint_file).parameters) == ["state_dict", "filename"]
    assert "_write_checkpoint_file(state_dict, save_filename)" in inspect.getsource(
        checkpoint._save_checkpoint
    )


def test_every_single_file_load_goes_through_torch_load_with_validation():
    params = list(inspect.signature(checkpoint._torch_load_with_validation).parameters)
    assert params == ["checkpoint_filepath", "map_location"]
    assert "_torch_load_with_validation(composer_states_filepath" in inspect.getsource(checkpoint)
    assert list(inspect.signature(checkpoint._ensure_valid_checkpoint).parameters)[0] == "checkpoint_filepath"


def test_convert_time_takes_a_time_the_state_and_the_scale():
    assert list(inspect.signature(composer_schedulers._convert_time).parameters) == ["time", "state", "ssr"]


def test_wandb_logger_keeps_log_artifacts():
    assert "self._log_artifacts = log_artifacts" in inspect.getsource(WandBLogger.__init__)
    assert composer_private.logs_artifacts(type("L", (), {"_log_artifacts": True})())
