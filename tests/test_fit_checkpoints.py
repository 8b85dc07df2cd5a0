"""``fit --ckpt_path`` (issue 31): a foreign or truncated file is a one-line error naming
it; what a checkpoint stores is data, never the files fit opens."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from native_mm.cli import main as cli
from native_mm.io import torch_bytes, write_checked
from tests.doubles import fit_args, text_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return text_shards(tmp_path_factory.mktemp("ck") / "shards", n_docs=30)


@pytest.mark.parametrize("content", [pickle.dumps({"a": 1}, protocol=4), b"PK\x03\x04" + bytes(9),
                                     b""])  # fmt: skip
def test_a_foreign_or_truncated_checkpoint_is_one_line(shards, tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    rc = cli([*fit_args(shards, tmp_path / "run", 2), "--ckpt_path", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and str(bad) in err[-1] and "cannot load checkpoint" in err[-1], err[-3:]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_path_stored_in_the_checkpoint_does_not_change_what_fit_opens(shards, tmp_path,
                                                                        capsys):  # fmt: skip
    out = tmp_path / "run"
    assert cli(fit_args(shards, out, 2)) == 0
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["hyper_parameters"].get("code_vectors") is None
    ckpt["hyper_parameters"]["code_vectors"] = str(tmp_path / "elsewhere" / "code_vectors.npz")
    write_checked(last, torch_bytes(ckpt))  # a valid checksum: only the stored path differs
    capsys.readouterr()
    assert cli(fit_args(shards, out, 3, "--ckpt_path", str(last))) == 0  # did not open it
    err = capsys.readouterr().err
    assert "was trained with model.code_vectors=" in err and "the recipe's None is used" in err
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 3 and resumed["hyper_parameters"]["code_vectors"] is None


def test_the_checked_loader_stays_whatever_other_plugins_are_given(shards, tmp_path):
    from native_mm.training.checkpoint_io import ChecksummedCheckpointIO
    from native_mm.training.cli import make_cli

    env = "lightning.pytorch.plugins.environments.LightningEnvironment"
    args = fit_args(shards, tmp_path / "run", 2, "--trainer.plugins", env)[1:]
    cli = make_cli(args, run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, ChecksummedCheckpointIO)


def test_weights_only_false_is_said_and_not_honoured(shards, tmp_path, capsys):
    """Lightning's ``fit --weights_only false`` would unpickle objects; native-mm loads
    weights only and says so, and a pickle that runs code is still refused."""
    out = tmp_path / "run"
    assert cli(fit_args(shards, out, 2)) == 0
    last = out / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    extra = ("--ckpt_path", str(last), "--weights_only", "false")
    assert cli(fit_args(shards, out, 3, *extra)) == 0
    assert "--weights_only false is not honoured" in capsys.readouterr().err

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Boom()}, protocol=4))
    rc = cli(fit_args(shards, tmp_path / "run2", 2, "--ckpt_path", str(evil), "--weights_only",
                      "false"))  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "pwned" not in captured.out and str(evil) in captured.err
