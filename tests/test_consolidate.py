"""FSDP sharded checkpoints (the GPU recipe's ``state_dict_type: sharded``) consolidate into
the full model (issue 19): written here by ``torch.distributed.checkpoint`` from 2 CPU
processes, each holding half of every weight, in Lightning's layout (the DCP files with
the module's state under ``model``, plus ``meta.pt``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from native_mm.checkpoint import CheckpointError, load_checkpoint
from native_mm.cli import main as cli
from native_mm.generation import SamplingConfig, generate_ids
from native_mm.layouts import Layout
from native_mm.model import ModelConfig, Transformer
from native_mm.tokenizers.base import TokenizerSet

ARCH = dict(block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, kernels="plain")


def _rank(rank: int, world: int, out: str, config: dict, meta: dict, store: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    # a file store: no port to race for
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**config))
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    state = get_model_state_dict(model)  # DTensors: this rank's half of each weight
    assert state["wte.weight"].to_local().shape[0] == model.config.padded_vocab_size // world
    dcp.save({"model": {f"model.{k}": v for k, v in state.items()}}, checkpoint_id=out)
    if rank == 0:
        torch.save(meta, os.path.join(out, "meta.pt"))
    dist.barrier()  # no rank leaves while another still talks to it (gloo aborts then)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tokenizer_dir):
    import torch.multiprocessing as mp

    tset = TokenizerSet.load(tokenizer_dir)
    config = {**ARCH, "vocab_size": tset.vocab.size}
    layout = Layout.for_vocab(tset.vocab, tset.vocab.audio_levels).to_dict()
    meta = {"model_config": config, "vocab_manifest": tset.manifest(), "layout": layout,
            "weight_layout": "nn.Linear", "global_step": 7}  # fmt: skip
    # Two gloo processes on a loaded 2-core machine: now and then (about 1 suite run in 4,
    # never alone) a rank aborts at its teardown with "terminate called without an active
    # exception" after writing its shard. The writers are the test's harness, not the code
    # under test, so a run whose writer aborted is written again, once, from scratch.
    for attempt in range(2):
        root = tmp_path_factory.mktemp("fsdp")
        out = root / "last.ckpt"
        try:
            mp.spawn(_rank, args=(2, str(out), config, meta, str(root / "store")), nprocs=2)
            break
        except mp.ProcessExitedException:
            if attempt:
                raise
    torch.manual_seed(0)
    return out, Transformer(ModelConfig(**config)), tset


def test_shards_consolidate_into_the_full_model(sharded):
    out, reference, tset = sharded
    assert sorted(p.name for p in out.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    lm = load_checkpoint(out, tset)
    assert lm.steps == 7
    want = reference.state_dict()
    for name, value in lm.model.state_dict().items():
        assert torch.equal(value, want[name]), name
    ids = torch.randint(0, tset.vocab.size, (1, 40))
    with torch.no_grad():
        assert torch.equal(lm.model(ids), reference.eval()(ids))


def test_export_of_a_sharded_checkpoint_generates_the_same(sharded, tmp_path, capsys):
    out, _, tset = sharded
    tok = str(tmp_path.parent / "t")
    tset.save(tok)
    assert (
        cli(["export", "--ckpt", str(out), "--tokenizers", tok, "--out", str(tmp_path / "m")]) == 0
    )
    a, b = load_checkpoint(out, tset), load_checkpoint(tmp_path / "m", tset)
    sampling = SamplingConfig(max_new_tokens=20, seed=3)
    [ga], [gb] = (generate_ids(m.model, [[1]], m.codec, None, sampling) for m in (a, b))
    assert np.array_equal(ga.ids, gb.ids)


def test_a_damaged_shard_is_named(sharded, tmp_path):
    import shutil

    out, _, tset = sharded
    broken = tmp_path / "last.ckpt"
    shutil.copytree(out, broken)
    data = (broken / "__1_0.distcp").read_bytes()
    (broken / "__1_0.distcp").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.ckpt: cannot consolidate the sharded"):
        load_checkpoint(broken, tset)
