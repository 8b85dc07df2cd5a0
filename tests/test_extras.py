"""Experiment trackers are extras (issue 25): the CSV path needs none; a recipe asking for
wandb without it installed is a one-line error naming the extra, before any training."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture
def no_wandb(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))  # fmt: skip


def test_fit_asking_for_wandb_without_it_is_one_line_naming_the_extra(no_wandb, tmp_path,
                                                                       capsys) -> None:  # fmt: skip
    from native_mm.cli import main as cli
    from tests.doubles import fit_args, text_shards

    shards = text_shards(tmp_path / "shards", n_docs=20)
    rc = cli([*fit_args(shards, tmp_path / "run", 2), "--run.logger", "wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and 'pip install -e ".[wandb]"' in err[-1], err[-3:]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert cli(fit_args(shards, tmp_path / "csv", 2)) == 0  # csv needs no extra


def test_require_names_the_module_the_setting_and_the_extra(no_wandb) -> None:
    from native_mm.extras import MissingExtra, require

    with pytest.raises(MissingExtra, match=r"trainer.logger: wandb needs wandb.*\[wandb\]"):
        require("wandb", "wandb", "trainer.logger: wandb")
    require("numpy", "none", "numpy")  # installed: no error
