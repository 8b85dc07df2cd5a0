"""Every recipe parses with the fit CLI; the GPU recipe's model builds on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from native_mm.model import ModelConfig, Transformer
from native_mm.training.cli import FitCLI, make_cli

# fit recipes (LightningCLI configs); pipeline recipes such as digits.yaml have no trainer
RECIPES = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")
    if "trainer" in (yaml.safe_load(p.read_text()) or {})
)


class ParseOnly(FitCLI):
    """Parse and validate the config; instantiate nothing (shards need not exist)."""

    def instantiate_classes(self) -> None:
        pass


def parse(path: Path, *overrides: str):
    return make_cli(["--config", str(path), *overrides], run=False, cli_class=ParseOnly).config


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(path):
    cfg = parse(path)
    arch = ModelConfig.from_dict(dict(cfg.model.arch))
    assert cfg.data.seq_len <= arch.block_size, "data.seq_len must fit the model's block_size"
    assert cfg.data.sources and all(s.weight > 0 for s in cfg.data.sources)
    # every field carries a comment (type and default)
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#") and not s.startswith("- path") and ":" in s:
            if s.endswith(":") and s[:-1].isidentifier():
                continue  # a section header
            assert "#" in s, f"{path.name}: field without a comment: {s!r}"


def test_overrides_reach_the_config():
    cfg = parse(RECIPES[0], "--model.arch.n_layer", "3", "--data.batch_size", "6",
                "--trainer.max_steps", "7")  # fmt: skip
    assert cfg.model.arch.n_layer == 3 and cfg.data.batch_size == 6
    assert cfg.trainer.max_steps == 7


def test_gpu_recipe_builds_on_meta_device(capsys):
    path = next(p for p in RECIPES if "gpu" in p.stem)
    cfg = parse(path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.num_nodes > 1
    assert "FSDP" in cfg.trainer.strategy.class_path
    arch = ModelConfig.from_dict(dict(cfg.model.arch))
    with torch.device("meta"):
        model = Transformer(arch)
    n = model.num_params()
    gflop = model.flops_per_token(arch.block_size) / 1e9
    print(f"{path.name}: {n / 1e9:.2f}B parameters, {gflop:.1f} GFLOP/token (train)")
    assert 6.5e9 < n < 7.5e9
    assert all(p.device.type == "meta" for p in model.parameters())
