"""Code vectors: the tokenizers' code latents, saved with the set, start the LM's embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from native_mm.model import ModelConfig, Transformer
from native_mm.tokenizers.base import CODE_VECTORS, TokenizerSet
from native_mm.training.module import LanguageModule, init_code_embeddings
from native_mm.vocab import VocabError


@pytest.fixture(scope="module")
def tset(tiny_tokenizers) -> TokenizerSet:
    return tiny_tokenizers


def test_code_vectors_are_what_the_decoders_read(tset) -> None:
    vec = tset.code_vectors()
    assert set(vec) == {"image", "audio"}  # text pieces have no geometry
    assert vec["image"].shape == (1, 32, 8) and vec["audio"].shape == (3, 16, 8)
    img = tset["image"].model.quantizer.decode_indices(torch.tensor([[5]]))
    assert np.allclose(vec["image"][0, 5], img[0, 0].detach().numpy())
    layer = tset["audio"].model.quantizer.vq.layers[2]
    assert np.allclose(vec["audio"][2, 7], layer.decode(torch.tensor([[7]]))[0, :, 0].numpy())


def test_saved_set_holds_them_and_the_lm_starts_from_them(tset, tmp_path) -> None:
    tset.save(tmp_path / "set")
    path = tmp_path / "set" / CODE_VECTORS
    v, manifest = tset.vocab, tset.manifest()
    model = Transformer(ModelConfig(vocab_size=v.size, n_embd=32, n_head=2, n_layer=1))
    before = model.wte.weight.detach().clone()
    done = init_code_embeddings(model, manifest, str(path))
    assert done == {"image": 32, "audio": 48}
    w = model.wte.weight.detach()
    img = slice(v.ranges["image"].start, v.ranges["image"].stop)
    text = slice(v.ranges["text"].start, v.ranges["text"].stop)
    assert torch.equal(w[text], before[text])  # other rows untouched
    assert abs(w[img].std().item() - model.config.init_std) < 1e-3
    # A linear map of the latents: distances between codes are kept up to noise.
    lat = torch.from_numpy(tset.code_vectors()["image"][0])
    d_lat, d_emb = torch.pdist(lat), torch.pdist(w[img])
    corr = np.corrcoef(d_lat.numpy(), d_emb.numpy())[0, 1]
    assert corr > 0.8, corr
    # The LightningModule does the same when it builds its model.
    lm = LanguageModule(arch=ModelConfig(n_embd=32, n_head=2, n_layer=1),
                        vocab_manifest=manifest, code_vectors=str(path))  # fmt: skip
    lm.configure_model()
    assert torch.allclose(lm.model.wte.weight[img], w[img])


def test_mismatched_or_missing_code_vectors_are_named(tset, tmp_path) -> None:
    tset.save(tmp_path / "set")
    path = tmp_path / "set" / CODE_VECTORS
    v = tset.vocab
    model = Transformer(ModelConfig(vocab_size=v.size, n_embd=32, n_head=2, n_layer=1))
    other = dict(tset.manifest(), fingerprints={"text": "0" * 64})
    with pytest.raises(VocabError, match=str(path)):
        init_code_embeddings(model, other, str(path))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        init_code_embeddings(model, tset.manifest(), str(tmp_path / "nope.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz: cannot read code vectors"):
        init_code_embeddings(model, tset.manifest(), str(tmp_path / "bad.npz"))
