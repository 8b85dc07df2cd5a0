"""Fault injection into checkpoints (issue 31): random byte flips, truncations, deletions
and appended junk in every file of a plain ``.pt`` checkpoint and of an exported model
directory (weights, config, vocabulary and their sha256 files), loaded the way
``generate``, ``eval`` and ``export`` load them; and in a training checkpoint given to
``fit --ckpt_path``. Each trial must end in an error naming the file, or load exactly the
original model: a changed model without an error is *missed*, any other exception is a
*traceback*; both must be 0.

Seeded and fast here; ``FAULT_TRIALS=1000 pytest tests/test_checkpoint_faults.py -s`` runs
the longer mode and prints the table recorded in RELIABILITY.md.
"""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from native_mm.checkpoint import (
    CheckpointError,
    Pretrained,
    export_model,
    load_checkpoint,
    save_checkpoint,
)
from native_mm.layouts import Layout
from native_mm.model import ModelConfig, Transformer
from native_mm.vocab import Vocab
from tests.test_fault_injection import FAULTS, _inject, count_trials

TRIALS = int(os.environ.get("FAULT_TRIALS", "150"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """``m.pt`` (+ sha256) and the exported directory ``m/`` of one tiny model."""
    root = tmp_path_factory.mktemp("clean_ckpt")
    vocab = Vocab(text_size=300, image_codes=16, audio_codes=16, audio_levels=2)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=vocab.size)).eval()
    layout = Layout.for_vocab(vocab, audio_levels=1)
    save_checkpoint(root / "m.pt", model, vocab.to_manifest(), layout)
    export_model(Pretrained(model, vocab, layout), root / "m", vocab.to_manifest())
    return root


def _same(a: Pretrained, b: Pretrained) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return (
        a.vocab == b.vocab
        and a.layout == b.layout
        and a.model.config == b.model.config
        and sa.keys() == sb.keys()
        and all(torch.equal(sa[k], sb[k]) for k in sa)
    )


def run_trials(clean: Path, work: Path, trials: int, seed: int = 0) -> collections.Counter:
    files = ["m.pt", "m.pt.sha256.json"] + sorted(f"m/{p.name}" for p in (clean / "m").iterdir())
    original = load_checkpoint(clean / "m.pt")
    assert _same(original, load_checkpoint(clean / "m"))

    def draw(rng: np.random.Generator) -> tuple[str, str, str]:
        return files[int(rng.integers(0, len(files)))], str(rng.choice(FAULTS)), ""

    def load(trial: Path, rel: str, _: str) -> Pretrained:
        return load_checkpoint(trial / ("m" if rel.startswith("m/") else "m.pt"))

    def judge(got: Pretrained, *_: str) -> str:
        return "harmless" if _same(got, original) else "missed"

    return count_trials(clean, work, trials, np.random.default_rng(seed), draw, load,
                        (CheckpointError, FileNotFoundError), judge)  # fmt: skip


def test_random_checkpoint_faults_are_caught_naming_the_file(clean, tmp_path):
    counts = run_trials(clean, tmp_path, TRIALS)
    print(dict(counts))
    assert counts["missed"] == 0 and counts["traceback"] == 0, dict(counts)
    assert counts["caught_without_the_file"] == 0, dict(counts)
    assert counts["caught"] > TRIALS // 2  # the faults did land


def test_an_export_without_checksums_still_loads(clean, tmp_path):
    """Directories exported before the sha256 files existed load as they did."""
    shutil.copytree(clean / "m", tmp_path / "m")
    for side in (tmp_path / "m").glob("*.sha256.json"):
        side.unlink()
    assert _same(load_checkpoint(tmp_path / "m"), load_checkpoint(clean / "m"))


@pytest.mark.parametrize("seed", range(4))
def test_fit_resume_from_a_damaged_checkpoint_is_one_line(tmp_path_factory, tmp_path, capsys,
                                                          seed):  # fmt: skip
    """``fit --ckpt_path`` on a training checkpoint with a random fault: a one-line error
    naming the file (the checkpoint has its sha256 beside it), nothing written."""
    from native_mm.cli import main as cli
    from tests.doubles import fit_args, text_shards

    shards = text_shards(tmp_path_factory.mktemp("fs") / "shards", n_docs=30)
    out = tmp_path / "run"
    assert cli(fit_args(shards, out, 2)) == 0
    last = out / "checkpoints" / "last.ckpt"
    rng = np.random.default_rng(seed)
    rel = [last, last.with_name("last.ckpt.sha256.json")][seed % 2]
    _inject(rel, ["flip", "truncate", "flip_many", "append"][seed], rng)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = cli(fit_args(shards, out, 3, "--ckpt_path", str(last)))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "last.ckpt" in err[-1], err[-3:]
    assert "Traceback" not in "\n".join(err)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing rewritten
