"""Shared tokenizer-training glue: spec loading, end-of-run checkpoint, resumable logs."""

import csv
import dataclasses
import os
import stat

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from native_mm.io import write_json
from native_mm.tokenizers.trainer import TrainerSpec, fit_tokenizer, load_spec


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        (x,) = batch
        loss = self.lin(x).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)


def test_last_checkpoint_at_end_and_logs_survive_resume(tmp_path):
    spec = TrainerSpec(max_steps=3, checkpoint_every=100, log_every=1, accelerator="cpu")
    fit_tokenizer(Tiny(), loader(), tmp_path, spec)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    spec = dataclasses.replace(spec, max_steps=5)
    fit_tokenizer(Tiny(), loader(), tmp_path, spec)  # resumes from step 3
    assert torch.load(last, weights_only=True)["global_step"] == 5
    with open(tmp_path / "train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]
    assert steps == [0, 1, 2, 3, 4]


@dataclasses.dataclass
class Spec:
    name: str = "x"
    trainer: TrainerSpec = dataclasses.field(default_factory=TrainerSpec)


def test_load_spec_nested_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: a\ntrainer:\n  max_steps: 7\n")
    spec = load_spec(Spec, path, ["trainer.precision=bf16-mixed", "name=b"])
    assert (spec.name, spec.trainer.max_steps, spec.trainer.precision) == ("b", 7, "bf16-mixed")
    path.write_text("trainer:\n  max_stepz: 7\n")
    with pytest.raises(ValueError, match=r"s.yaml:trainer: unknown key\(s\) \['max_stepz'\]"):
        load_spec(Spec, path)


def test_atomic_files_get_the_usual_mode(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
