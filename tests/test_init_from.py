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


@pytest.mark.parametrize("n_added", [3, 20])  # inside the padded rows; past them (resized)
def test_vocabulary_growth_keeps_old_rows_bit_identical(first_stage, tmp_path, n_added):
    """A second stage whose data adds special tokens (e.g. chat role markers) starts from
    the old weights: every old embedding and output row bit for bit, each new row the mean
    of the old ones (never a padding row the first stage pushed down)."""
    from dataclasses import replace

    from native_mm.checkpoint import init_weights
    from native_mm.model import ModelConfig, Transformer
    from native_mm.training.shards import write_shards_from_ids
    from native_mm.vocab import Vocab
    from tests.doubles import random_docs

    shards, ckpt = first_stage
    old_model = load_checkpoint(ckpt).model
    old_vocab = Vocab(text_size=100)
    grown = replace(old_vocab, added=tuple(f"<new{i}>" for i in range(n_added)))
    cfg = ModelConfig(**{**old_model.config.to_dict(), "vocab_size": grown.size})
    model = Transformer(cfg)
    assert init_weights(model, ckpt, grown.to_manifest()) == 30
    old = old_vocab.size
    for name in ("wte.weight", "lm_head.weight"):
        before, after = old_model.state_dict()[name], model.state_dict()[name]
        assert torch.equal(after[:old], before[:old])  # bit-identical old rows
        new_rows = after[old : grown.size]
        mean = before[:old].mean(0).expand_as(new_rows)  # (summed in another memory order)
        assert torch.allclose(new_rows, mean, rtol=0, atol=1e-6)
    rest = [k for k in model.state_dict() if k not in ("wte.weight", "lm_head.weight")]
    assert all(torch.equal(model.state_dict()[k], old_model.state_dict()[k]) for k in rest)
    # the fit verb: data in the grown vocabulary (using the new ids) trains from the weights
    docs = random_docs(grown, 60, seed=1)
    for ids, _ in docs[::3]:
        ids[1] = grown.special_id("<new0>")  # a new token right after <bos>
    write_shards_from_ids(tmp_path / "grown", docs, grown, docs_per_shard=64)
    make_cli(fit_args(tmp_path / "grown", tmp_path / "stage2", 2, "--model.init_from", str(ckpt)))
    assert step_losses(tmp_path / "stage2")[0] < 3.0
    # the other way (the checkpoint has specials the data lacks) is not growth
    with pytest.raises(CheckpointError, match="vocabulary .* differs"):
        init_weights(Transformer(old_model.config), tmp_path / "stage2/checkpoints/last.ckpt",
                     old_vocab.to_manifest())  # fmt: skip
