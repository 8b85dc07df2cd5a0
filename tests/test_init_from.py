"""``fit --model.init_from`` (issue 19): a new stage starts from a checkpoint's or a model
directory's weights only (fresh optimiser, schedule and step count; another batch size and
sequence length), and refuses data of another vocabulary by name."""

from __future__ import annotations

import pytest
import torch

from native_mm.checkpoint import CheckpointError, export_model, load_checkpoint
from native_mm.training.cli import make_cli
from tests.doubles import fit_args, step_losses, text_shards


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    shards = text_shards(root / "shards", n_docs=120)
    make_cli(fit_args(shards, root / "run", 30))
    return shards, root / "run" / "checkpoints" / "last.ckpt"


def test_a_new_stage_starts_from_the_weights_only(first_stage, tmp_path):
    shards, ckpt = first_stage
    trained = step_losses(ckpt.parents[1])
    other = ["--data.batch_size", "2", "--data.seq_len", "16"]  # another batch and length
    make_cli(fit_args(shards, tmp_path / "fresh", 3, *other))
    make_cli(fit_args(shards, tmp_path / "stage2", 3, *other, "--model.init_from", str(ckpt)))
    fresh, stage2 = step_losses(tmp_path / "fresh"), step_losses(tmp_path / "stage2")
    assert sorted(stage2) == sorted(fresh) == [0, 1, 2]  # a step count of its own, from 0
    assert stage2[0] < fresh[0] - 0.5 and stage2[0] < trained[0] - 0.5  # trained weights
    new = torch.load(tmp_path / "stage2/checkpoints/last.ckpt", weights_only=True)
    assert new["global_step"] == 3  # not 30 + 3: the schedule starts over
    assert new["optimizer_states"][0]["state"][0]["step"].item() == 3  # a fresh AdamW


def test_from_a_model_directory_and_refusals(first_stage, tmp_path, capsys):
    shards, ckpt = first_stage
    pre = load_checkpoint(ckpt)
    manifest = torch.load(ckpt, weights_only=True)["hyper_parameters"]["vocab_manifest"]
    export_model(pre, tmp_path / "model", manifest)
    make_cli(
        fit_args(shards, tmp_path / "from_dir", 2, "--model.init_from", str(tmp_path / "model"))
    )
    assert step_losses(tmp_path / "from_dir")[0] < 3.0
    other = text_shards(tmp_path / "other", n_docs=40, text_size=60)  # another vocabulary
    with pytest.raises(CheckpointError, match="vocabulary .* differs"):
        make_cli(fit_args(other, tmp_path / "x", 2, "--model.init_from", str(ckpt)))
    with pytest.raises(CheckpointError, match="weights do not fit this run's model.arch"):
        make_cli(fit_args(shards, tmp_path / "y", 2, "--model.init_from", str(ckpt),
                          "--model.arch.n_embd", "64"))  # fmt: skip
