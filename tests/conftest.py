"""Shared fixtures (keep small: one fixture per expensive shared object)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SAMPLE = ROOT / "tokenizers" / "text" / "corpus" / "sample.txt"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are fastest single-threaded (and the CPU is shared); a module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def text_corpus() -> list[str]:
    """A few paragraphs (English, code, numbers, other scripts) plus digit phrases."""
    from native_mm.apps.digits.sources import digit_sentences

    return [*TEXT_SAMPLE.read_text(encoding="utf-8").splitlines(), *digit_sentences()]


@pytest.fixture(scope="session")
def text_tokenizer(text_corpus):
    """A 500-piece BPE text tokenizer trained once per session (~0.1 s)."""
    from native_mm.tokenizers.text import TextSpec, train_text_tokenizer

    return train_text_tokenizer(TextSpec(vocab_size=500, character_coverage=1.0), text_corpus)


@pytest.fixture(scope="session")
def tiny_tokenizers(text_tokenizer):
    """Real text BPE, a tiny random VQ-GAN (factor 4) and a tiny random EnCodec (3 levels).

    channels=64: GroupNorm needs >= 2 channels per group to decode a 1x1 grid.
    """
    import torch

    from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
    from native_mm.tokenizers.base import TokenizerSet
    from native_mm.tokenizers.image import ImageConfig, ImageTokenizer

    torch.manual_seed(0)
    image = ImageTokenizer(
        ImageConfig(factor=4, channels=64, channel_mult=(1, 1, 1), z_channels=8,
                    codebook_size=32, codebook_dim=4, kmeans_init=False)
    )  # fmt: skip
    audio = AudioTokenizer(
        AudioConfig(sample_rate=8000, n_filters=4, ratios=[4, 4], dimension=8, lstm=0,
                    n_q=3, codebook_size=16, kmeans_iters=1)
    )  # fmt: skip
    return TokenizerSet(text_tokenizer, image, audio, image_max_grid=16)
