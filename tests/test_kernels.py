"""Each CPU speed-up of native_mm.kernels equals the plain path (values and gradients), and
the model's weights are plain PyTorch: a hand-written reference decoder that loads the
state dict by its documented names computes the same logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from native_mm import kernels
from native_mm.model import ModelConfig, Transformer


def _pair(**overrides) -> tuple[Transformer, Transformer]:
    """The same weights twice: kernels "auto" and "plain"."""
    torch.manual_seed(0)
    fast = Transformer(ModelConfig.from_name("tiny", kernels="auto", **overrides))
    plain = Transformer(ModelConfig.from_name("tiny", kernels="plain", **overrides))
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 6, 7, 8)])
def test_rms_norm_kernel_equals_plain(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = (torch.rand(shape[-1]) + 0.5).requires_grad_(True)
    if len(shape) == 4:  # per-head gains (N, 1, C), as the QK-norm
        w = (torch.rand(shape[1], 1, shape[-1]) + 0.5).requires_grad_(True)
    gy = torch.randn(shape)
    ref = F.rms_norm(x, (shape[-1],), eps=1e-5) * w
    out = kernels.rms_norm(x, w, 1e-5)
    assert out is not None and out.grad_fn.name().endswith("_RMSNormFnBackward")
    torch.testing.assert_close(out, ref)
    for g, r in zip(torch.autograd.grad(out, (x, w), gy), torch.autograd.grad(ref, (x, w), gy),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(g, r)
    with torch.no_grad():
        assert kernels.rms_norm(x, w, 1e-5) is None  # inference: the plain op


def test_rms_norm_public_fallback(monkeypatch):
    """Without torch's private fused op the kernel computes the same from public ops."""
    x = torch.randn(4, 32, requires_grad=True)
    w = torch.rand(32, requires_grad=True)
    with_op = kernels.rms_norm(x, w, 1e-5)
    monkeypatch.setattr(kernels, "_FUSED_RMS", None)
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-5), with_op)


@pytest.mark.parametrize("t", [128, 200, 300])
def test_blocked_causal_attention_equals_sdpa(t: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, t, 16, requires_grad=True) for _ in range(3))
    gy = torch.randn(2, 3, t, 16)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), gy)
    out = kernels.causal_attention(q, k, v, 128)
    torch.testing.assert_close(out, ref)
    for g, r in zip(torch.autograd.grad(out, (q, k, v), gy), ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    assert kernels.causal_attention(q.double(), k.double(), v.double()) is None  # fp32 only


@pytest.mark.parametrize("rows", [7, 1000])
def test_fused_head_cross_entropy_matches_the_logits_path(rows):
    """Chunked output layer + CE (gradients made in the forward) == autograd on full logits."""
    torch.manual_seed(0)
    n, d, v = 40, 16, 96
    h = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(v, d, requires_grad=True)  # nn.Linear's (out, in)
    target = torch.randint(0, v, (n,))
    target[:5] = target[5]  # repeated targets in one chunk (the one-hot scatter adds up)
    w_ce, w_z = torch.rand(n) * (torch.rand(n) > 0.2), torch.rand(n) * 1e-2
    logits = h @ weight.t()
    lse = torch.logsumexp(logits, -1)
    ce = lse - logits.gather(1, target[:, None]).squeeze(1)
    ref = (ce * w_ce).sum() + (lse.square() * w_z).sum()
    ref_grads = torch.autograd.grad(3 * ref, (h, weight))  # upstream gradient 3, not 1
    fn = kernels._HeadCrossEntropyFn
    loss, ce2, lse2, pred = fn.apply(h, weight, target, w_ce, w_z, rows, True)
    grads = torch.autograd.grad(3 * loss, (h, weight))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(ce2, ce.detach())
    torch.testing.assert_close(lse2, lse.detach())
    assert torch.equal(pred, logits.argmax(-1))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "n_kv_head": 4}])
def test_model_with_kernels_equals_plain_model(overrides):
    """A training forward + backward of the whole model: same logits and gradients."""
    fast, plain = _pair(**overrides)
    idx = torch.randint(0, 500, (2, 140))  # two attention blocks of 128
    outs = []
    for m in (fast, plain):
        m.train()
        logits = m(idx)
        logits.float().logsumexp(-1).mean().backward()
        outs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for name, g in outs[0][1].items():
        torch.testing.assert_close(g, outs[1][1][name], msg=name)


def test_decode_layout_keeps_values_and_tokens():
    model, _ = _pair()
    model.eval()
    prompt = torch.randint(0, 500, (2, 8))
    with torch.no_grad():
        ref = model(prompt)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        kernels.decode_layout(model)
        assert not model.blocks[0].attn.qkv.weight.is_contiguous()  # column-major now
        weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        starts = [w.data_ptr() for w in weights]  # one block, in module order, 2 MB-aligned
        assert starts == sorted(starts) and starts[0] % (2 << 20) == 0
        assert len({w.untyped_storage().data_ptr() for w in weights}) == 1
        torch.testing.assert_close(model(prompt), ref)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())


def reference_logits(sd: dict, cfg: ModelConfig, idx: torch.Tensor) -> torch.Tensor:
    """A plain decoder written from the documented state-dict names alone (no native_mm
    module): every Linear is ``F.linear(x, sd[name])`` with an (out, in) weight."""
    h, g, c = cfg.n_head, cfg.n_kv_head, cfg.head_size
    b, t = idx.shape
    pos = torch.arange(t, dtype=torch.float64)
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, c, 2, dtype=torch.float64) / c)
    ang = torch.outer(pos, inv)
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(z):  # (B, N, T, C), (even, odd) pairs rotated
        z0, z1 = z[..., 0::2], z[..., 1::2]
        return torch.stack((z0 * cos - z1 * sin, z0 * sin + z1 * cos), -1).flatten(-2)

    def norm(z, w):
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    x = F.embedding(idx, sd["wte.weight"])
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        a = norm(x, sd[p + "norm1.weight"])
        qkv = F.linear(a, sd[p + "attn.qkv.weight"]).view(b, t, h + 2 * g, c).transpose(1, 2)
        q, k, v = qkv.split([h, g, g], dim=1)
        if cfg.qk_norm:
            gains = sd[p + "attn.qk_norm"]  # (H + G, C)
            q, k = norm(q, gains[:h, None]), norm(k, gains[h:, None])
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(h // g, 1), v.repeat_interleave(h // g, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(y.transpose(1, 2).reshape(b, t, -1), sd[p + "attn.proj.weight"])
        m = norm(x, sd[p + "norm2.weight"])
        gate, up = F.linear(m, sd[p + "mlp.gate_up.weight"]).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, sd[p + "mlp.proj.weight"])
    x = norm(x, sd["norm.weight"])
    return F.linear(x, sd.get("lm_head.weight", sd["wte.weight"]))


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "qk_norm": False}])
def test_state_dict_is_plain_pytorch(overrides):
    model, _ = _pair(**overrides)
    sd = model.state_dict()
    cfg = model.config
    assert sd["blocks.0.attn.qkv.weight"].shape == ((cfg.n_head + 2 * cfg.n_kv_head)
                                                   * cfg.head_size, cfg.n_embd)  # fmt: skip
    assert sd["blocks.0.mlp.proj.weight"].shape == (cfg.n_embd, cfg.intermediate_size)
    idx = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(sd, cfg, idx), model.eval()(idx))


def test_exported_model_directory_is_plain_pytorch(tmp_path):
    """native-mm export writes safetensors a plain reference decoder reads by name alone;
    loading the directory back gives the same model and layout."""
    from safetensors.torch import load_file

    from native_mm.checkpoint import CheckpointError, Pretrained, export_model, load_checkpoint
    from native_mm.layouts import AudioFrameMajor, Layout
    from native_mm.vocab import Vocab

    vocab = Vocab(text_size=400, image_codes=32, audio_codes=16, audio_levels=2)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=vocab.size)).eval()
    layout = Layout.for_vocab(vocab, audio_levels=1)
    kernels.decode_layout(model)  # an inference model's column-major weights export fine
    out = export_model(Pretrained(model, vocab, layout), tmp_path / "m", vocab.to_manifest())
    sd = load_file(out / "model.safetensors")
    idx = torch.randint(0, vocab.size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(sd, model.config, idx), model(idx))
        back = load_checkpoint(out, vocab.to_manifest())
        torch.testing.assert_close(back.model(idx), model(idx))
    assert back.layout.audio == AudioFrameMajor(1)
    (out / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="not a model directory .vocab.json missing"):
        load_checkpoint(out)
