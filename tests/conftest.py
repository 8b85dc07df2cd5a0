"""Shared fixtures (keep small: one fixture per expensive shared object)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SAMPLE = ROOT / "tokenizers" / "text" / "corpus" / "sample.txt"


@pytest.fixture(scope="session")
def text_corpus() -> list[str]:
    """A few paragraphs (English, code, numbers, other scripts) plus digit phrases."""
    from native_mm.tokenizers.text import digit_sentences

    return [*TEXT_SAMPLE.read_text(encoding="utf-8").splitlines(), *digit_sentences()]


@pytest.fixture(scope="session")
def text_tokenizer(text_corpus):
    """A 500-piece BPE text tokenizer trained once per session (~0.1 s)."""
    from native_mm.tokenizers.text import TextSpec, train_text_tokenizer

    return train_text_tokenizer(TextSpec(vocab_size=500, character_coverage=1.0), text_corpus)
