"""restart.resolve_phase: how a launch starts, as one value, from the config and the save folder alone."""

from omegaconf import OmegaConf

from flex_bert.train.restart import resolve_phase


def _cfg(tmp_path, **over):
    cfg = {
        "run_name": "r",
        "save_folder": str(tmp_path / "{run_name}"),
        "autoresume": False,
        "load_path": None,
        "load_weights_only": False,
        "model": {"pretrained_checkpoint": None},
        "reset_time": False,
        "restart_override": False,
        "restart_data_if_changed": False,
    }
    cfg = OmegaConf.create(cfg)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_both_spellings_of_weights_only_are_one_weights_path_and_composer_loads_nothing(tmp_path):
    a = resolve_phase(_cfg(tmp_path, load_path="ckpt.pt", load_weights_only=True))
    b = resolve_phase(_cfg(tmp_path, **{"model.pretrained_checkpoint": "ckpt.pt"}))
    assert a.weights_path == b.weights_path == "ckpt.pt"
    assert a.load_path is None and b.load_path is None
    assert a.save_folder == str(tmp_path / "r")


def test_a_new_phase_loads_in_full_resets_time_applies_overrides_and_ignores_the_data_position(tmp_path):
    phase = resolve_phase(_cfg(tmp_path, load_path="p1.pt", reset_time=True, restart_override=True))
    assert (phase.resuming, phase.load_path, phase.weights_path) == (False, "p1.pt", None)
    assert phase.reset_time and phase.apply_overrides and phase.data_position == "ignore"


def test_a_relaunch_that_finds_its_own_checkpoint_continues_it_as_it_was(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "latest-rank0.pt").write_bytes(b"x")  # a regular file: repair_latest leaves it as it is
    phase = resolve_phase(
        _cfg(tmp_path, autoresume=True, load_path="p1.pt", reset_time=True, restart_override=True)
    )
    assert phase.resuming and phase.load_path is None and phase.weights_path is None
    assert not phase.reset_time and not phase.apply_overrides and phase.data_position == "check"
