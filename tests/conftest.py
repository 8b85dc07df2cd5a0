"""Shared fixtures (keep small: one fixture per expensive shared object)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch  # noqa: F401
import pytest

from tests import bad_inputs
from tests.reliability_common import _tiny_checkpoint, tiny_tokenizer_set

# Lightning gives its logger a handler on sys.stderr when first imported; imported here,
# that is the session's stream, not a test's captured one that closes after the test
# (which made "--- Logging error ---" in later tests when a module ran alone).
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


# ---- the reliability tests' shared objects (tests/test_reliability*.py) -------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, text_tokenizer) -> Path:
    return tiny_tokenizer_set(text_tokenizer, tmp_path_factory.mktemp("tok") / "tokenizers")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return bad_inputs.build(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def tokenized(tokenizer_dir, corpus, tmp_path_factory) -> tuple[Path, int, str]:
    """``native-mm tokenize`` over the bad corpus: (out dir, exit code, stderr)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    argv = ["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
            "--workers", "0", "--docs-per-shard", "4"]  # fmt: skip
    import contextlib
    import io

    from native_mm.cli import main as cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli(argv)
    return out, rc, err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random transformer saved as a plain inference checkpoint."""
    return _tiny_checkpoint(tokenizer_dir, tmp_path_factory.mktemp("ckpt"), 1024)


@pytest.fixture(scope="module")
def text_shards_dir(tmp_path_factory) -> Path:
    from tests.doubles import text_shards

    return text_shards(tmp_path_factory.mktemp("txt") / "shards", n_docs=60)


@pytest.fixture(scope="module")
def eval_checkpoint(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random transformer with room for the held-out clips' prompts (~1,150 tokens
    with the tiny EnCodec)."""
    return _tiny_checkpoint(tokenizer_dir, tmp_path_factory.mktemp("eval_ckpt"), 4096)
