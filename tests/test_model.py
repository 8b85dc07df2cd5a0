"""Model invariants: causality through gradients, cached decoding == full forward, padding."""

from __future__ import annotations

import pytest
import torch

from native_mm.model import PRESETS, KVCache, ModelConfig, ModelConfigError, Transformer


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny", **overrides)).eval()


def test_config_derives_and_checks() -> None:
    cfg = ModelConfig(vocab_size=1000, n_embd=96, n_head=6, n_kv_head=3)
    assert cfg.head_size == 16 and cfg.padded_vocab_size == 1024
    assert cfg.intermediate_size % 64 == 0 and cfg.intermediate_size >= 8 * 96 / 3
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelConfigError, match="n_head"):
        ModelConfig(n_embd=64, n_head=3)
    with pytest.raises(ModelConfigError, match="n_kv_head"):
        ModelConfig(n_embd=64, n_head=4, n_kv_head=3)
    with pytest.raises(ModelConfigError, match="unknown model preset"):
        ModelConfig.from_name("huge")
    with pytest.raises(ModelConfigError, match="unknown model config fields"):
        ModelConfig.from_dict({"n_layers": 3})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_name(name))
    assert model.num_params() > 0
    assert model.flops_per_token(512) > 6 * model.num_params(non_embedding=True)


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": False, "tie_embeddings": True}])
def test_gradient_causality(overrides: dict) -> None:
    model = _model(**overrides)
    idx = torch.randint(0, 500, (2, 16))
    emb = model.wte(idx).detach().requires_grad_(True)
    # Feed embeddings directly so the gradient w.r.t. every input position is visible.
    x = emb
    freqs = model.rope(slice(0, 16))
    for block in model.blocks:
        x = block(x, freqs, None)
    logits = model.head(model.norm(x))
    t = 7
    logits[:, t].sum().backward()
    grad = emb.grad.abs().sum(dim=(0, 2))  # (T,)
    assert torch.all(grad[t + 1 :] == 0)
    assert torch.all(grad[: t + 1] > 0)


def test_forward_shapes_and_init() -> None:
    model = _model(vocab_size=500)
    logits = model(torch.randint(0, 500, (3, 10)))
    assert logits.shape == (3, 10, 512)
    proj = model.blocks[0].attn.proj.weight.std().item()
    qkv = model.blocks[0].attn.qkv.weight.std().item()
    assert proj < qkv  # residual projections get the 1/sqrt(2L) scale
    with pytest.raises(ModelConfigError, match="block_size"):
        model(torch.zeros(1, 257, dtype=torch.long))


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 4}, {"n_kv_head": 1, "qk_norm": False}])
def test_cached_decoding_equals_full_forward(overrides: dict) -> None:
    model = _model(**overrides)
    idx = torch.randint(0, 500, (3, 24))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(3, 32)
        torch.testing.assert_close(model.prefill(idx[:, :10], cache), full[:, 9])
        for t in range(10, 24):
            torch.testing.assert_close(model.decode_step(idx[:, t], cache), full[:, t])
    assert cache.length == 24


def test_left_padding_matches_each_row_alone() -> None:
    model = _model()
    idx = torch.randint(1, 500, (3, 20))
    pad = torch.tensor([0, 4, 9])
    idx[1, :4] = 0
    idx[2, :9] = 0
    with torch.no_grad():
        alone = [model(idx[b : b + 1, int(pad[b]) :])[0] for b in range(3)]
        padded = model(idx, pad=pad)
        cache = model.new_cache(3, 20)
        first = model.prefill(idx[:, :12], cache, pad)
        steps = [model.decode_step(idx[:, t], cache) for t in range(12, 20)]
    for b in range(3):
        p = int(pad[b])
        torch.testing.assert_close(padded[b, p:], alone[b])
        torch.testing.assert_close(first[b], alone[b][11 - p])
        for i, t in enumerate(range(12, 20)):
            torch.testing.assert_close(steps[i][b], alone[b][t - p])
    assert torch.isfinite(padded).all()


def test_cache_limits_and_select() -> None:
    model = _model()
    with pytest.raises(ModelConfigError, match="block_size"):
        KVCache(model.config, 1, 1000)
    cache = model.new_cache(2, 4)
    with torch.no_grad():
        model.prefill(torch.zeros(2, 4, dtype=torch.long), cache)
        with pytest.raises(ModelConfigError, match="beyond the cache"):
            model.decode_step(torch.zeros(2, dtype=torch.long), cache)
    cache.select(torch.tensor([1]))
    assert cache.batch_size == 1 and cache.pad.shape == (1,)
