"""``native-mm export --transformers`` (issue 19): the decoder as a Qwen3/Llama checkpoint
that transformers itself loads, with our logits (1e-4) and our greedy tokens."""

from __future__ import annotations

import pytest
import torch

from native_mm.checkpoint import load_checkpoint, save_checkpoint
from native_mm.cli import main as cli
from native_mm.hf_export import ExportError, export_transformers
from native_mm.model import ModelConfig, Transformer
from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import EOS

transformers = pytest.importorskip("transformers")


def _model(seed: int = 0, **overrides) -> Transformer:
    """A small random model whose norm gains are not all ones (so a misplaced gain shows)."""
    torch.manual_seed(seed)
    arch = dict(vocab_size=300, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = Transformer(ModelConfig(**{**arch, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("qk_norm"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize(
    ("overrides", "arch"),
    [({"qk_norm_shared": True}, "Qwen3ForCausalLM"),
     ({"qk_norm": False, "tie_embeddings": True, "n_kv_head": 4}, "LlamaForCausalLM")],
)  # fmt: skip
def test_transformers_gives_our_logits(tmp_path, overrides, arch):
    ours = _model(**overrides)
    hf = _hf(export_transformers(ours, tmp_path))
    assert type(hf).__name__ == arch
    ids = torch.randint(0, 300, (2, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ours(ids), hf(ids).logits
    assert got.shape == want.shape == (2, 60, 320)  # the padded vocabulary
    assert (got - want).abs().max().item() < 1e-4


def _our_greedy(model: Transformer, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy over the real vocabulary with our KV-cache path, stopping after <eos>."""
    cache = model.new_cache(1)
    with torch.no_grad():
        logits = model.prefill(prompt[None], cache)
        out = []
        for _ in range(n):
            token = int(logits[0, : model.config.vocab_size].argmax())
            out.append(token)
            if token == EOS:
                break
            logits = model.decode_step(torch.tensor([token]), cache)
    return out


def test_cli_export_then_greedy_matches_ours(tokenizer_dir, tmp_path, capsys):
    """The CLI path end to end: a checkpoint over a real tokenizer set, exported; ours read
    back from the model directory, theirs from its transformers/ folder."""
    tset = TokenizerSet.load(tokenizer_dir)
    model = _model(seed=2, vocab_size=tset.vocab.size, block_size=256, qk_norm_shared=True)
    save_checkpoint(tmp_path / "model.pt", model, tset.manifest())
    rc = cli(["export", "--ckpt", str(tmp_path / "model.pt"), "--tokenizers", str(tokenizer_dir),
              "--out", str(tmp_path / "out"), "--transformers"])  # fmt: skip
    assert rc == 0 and "Qwen3ForCausalLM" in capsys.readouterr().out
    ours = load_checkpoint(tmp_path / "out", tset).model  # the decode-layout inference model
    hf = _hf(tmp_path / "out" / "transformers")
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(16, tset.vocab.size, (12,), generator=g)
        want = _our_greedy(ours, prompt, 40)
        got = hf.generate(prompt[None], do_sample=False, max_new_tokens=40)[0, 12:].tolist()
        assert got == want and len(set(want)) > 3  # a real continuation, not one token
    # the padding ids past the vocabulary are suppressed by the exported generation config
    padded = ours.config.padded_vocab_size
    assert hf.generation_config.suppress_tokens == list(range(tset.vocab.size, padded))


def test_per_head_gains_are_refused_not_averaged(tokenizer_dir, tmp_path, capsys):
    tset = TokenizerSet.load(tokenizer_dir)
    model = _model(seed=3, vocab_size=tset.vocab.size)  # a gain per head, all different
    with pytest.raises(ExportError, match="layer 0: the query heads .*qk_norm_shared: true"):
        export_transformers(model, tmp_path / "x")
    save_checkpoint(tmp_path / "model.pt", model, tset.manifest())
    rc = cli(["export", "--ckpt", str(tmp_path / "model.pt"), "--tokenizers", str(tokenizer_dir),
              "--out", str(tmp_path / "out"), "--transformers"])  # fmt: skip
    assert rc == 1 and "qk_norm_shared" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # per-head gains that happen to be equal (here: untrained) export exactly
    fresh = Transformer(ModelConfig(vocab_size=300, n_layer=1, n_head=4, n_embd=64)).eval()
    ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        diff = (_hf(export_transformers(fresh, tmp_path / "y"))(ids).logits - fresh(ids)).abs()
    assert diff.max().item() < 1e-4


def test_shared_gains_compute_what_equal_per_head_gains_do():
    """qk_norm_shared is the per-head model with every head's gain tied, nothing else."""
    shared = _model(seed=4, qk_norm_shared=True)
    per_head = Transformer(ModelConfig(**{**shared.config.to_dict(), "qk_norm_shared": False}))
    state = shared.state_dict()
    for key in [k for k in state if k.endswith("qk_norm")]:
        q, k = state[key]
        state[key] = torch.cat((q.expand(4, -1), k.expand(2, -1)))
    per_head.load_state_dict(state)
    ids = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert torch.allclose(shared(ids), per_head.eval()(ids), atol=1e-6)
    assert shared.blocks[0].attn.qk_norm.shape == (2, 16)
