"""The audio tokenizer's content loss: labels reach the crops, the head reads the first RVQ
level and teaches the encoder through it, the saved tokenizer holds no head, and a source
without labels is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from native_mm.tokenizers.audio import AudioConfig
from native_mm.tokenizers.audio_train import (
    AudioDataSpec,
    AudioLossSpec,
    AudioTrainSpec,
    ClipDataset,
    make_module,
    train,
)
from tests.test_audio_tokenizer import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_clip_dataset_pairs_each_crop_with_its_clips_label():
    # clip k is a constant k/10: a crop's value says which clip it came from
    clips = [torch.full((1, 4000), k / 10) for k in range(5)]
    spec = AudioDataSpec(segment_seconds=0.2, augment=False)
    ds = ClipDataset(clips, 8000, spec, 40, labels=[10 + k for k in range(5)])
    for i in range(40):
        x, y = ds[i]
        assert y == 10 + round(float(x.max()) * 10)
    assert isinstance(ClipDataset(clips, 8000, spec, 4)[0], torch.Tensor)  # unlabelled
    with pytest.raises(ValueError, match="5 clips but 2 labels"):
        ClipDataset(clips, 8000, spec, 4, labels=[0, 1])


def _tones(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a 300 Hz tone, class 1: 1,500 Hz, random phase and level, in noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3200) / 8000
    y = torch.arange(n) % 2
    f = torch.where(y == 0, 300.0, 1500.0)[:, None]
    ph = torch.rand(n, 1, generator=g) * 6.28
    x = torch.sin(2 * torch.pi * f * t + ph) * (0.2 + 0.6 * torch.rand(n, 1, generator=g))
    return (x + 0.05 * torch.randn(n, 3200, generator=g))[:, None], y


def test_content_loss_trains_the_encoder_through_the_first_level():
    torch.manual_seed(0)
    spec = AudioTrainSpec(model=AudioConfig(**TINY), loss=AudioLossSpec(content=1.0))
    module = make_module(spec, n_classes=2)
    x, y = _tones(16, 0)
    gen = module.generator
    gen.train()
    with torch.no_grad():
        gen.quantizer.vq(gen.encoder(x))  # k-means initialisation
    emb = gen.encoder(x)
    _, codes, _ = module.reconstruct(x, emb=emb)
    loss = module.content_loss(emb, codes, y)
    loss.backward()
    # straight through the first level's codes into the encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.encoder.parameters())
    assert all(p.grad is None for p in gen.decoder.parameters())
    params = [*gen.encoder.parameters(), *module.content.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(25):
        emb = gen.encoder(x)
        with torch.no_grad():
            codes = gen.quantizer.vq.layers[0].encode(emb)[None]
        loss = module.content_loss(emb, codes, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_with_content_loss_saves_a_plain_tokenizer(tmp_path):
    from native_mm.tokenizers.audio import AudioTokenizer
    from native_mm.tokenizers.trainer import load_spec

    spec = load_spec(
        AudioTrainSpec,
        ROOT / "tokenizers/audio/tiny.yaml",
        ["loss.content=1.0", "trainer.max_steps=3", "loss.quant_start=1"],
    )
    tok = train(spec, tmp_path / "run")
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    col = log[0].split(",").index("loss/content")
    assert all(float(r.split(",")[col]) > 0 for r in log[1:] if r.split(",")[col])
    saved = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert not [k for k in saved if "content" in k]
    back = AudioTokenizer.load(tmp_path / "run")
    assert back.fingerprint() == tok.fingerprint()


def test_content_loss_needs_labels(tmp_path):
    from native_mm.tokenizers.trainer import load_spec

    wavs = tmp_path / "wavs"
    wavs.mkdir()
    sf.write(wavs / "a.wav", np.zeros(4000, dtype=np.float32) + 0.1, 8000)
    spec = load_spec(
        AudioTrainSpec,
        ROOT / "tokenizers/audio/tiny.yaml",
        ["loss.content=1.0", f"data.source={wavs}"],
    )
    with pytest.raises(ValueError, match=r"loss.content = 1.0.*labelled source.*wavs"):
        train(spec, tmp_path / "run")
