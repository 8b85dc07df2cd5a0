"""Helpers shared by the reliability tests (test_reliability*.py); their fixtures are in
conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from native_mm.cli import main as cli
from native_mm.tokenizers.base import TokenizerSet
from tests import bad_inputs
from tests.bad_inputs import EXPECTED, LINE_FAILURES

REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer_set(text_tokenizer, out: Path, seed: int = 0) -> Path:
    """Real text BPE + tiny random VQ-GAN and EnCodec (weights from ``seed``), saved."""
    from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
    from native_mm.tokenizers.image import ImageConfig, ImageTokenizer

    torch.manual_seed(seed)
    image = ImageTokenizer(
        ImageConfig(factor=4, channels=64, channel_mult=(1, 1, 1), z_channels=8,
                    codebook_size=32, codebook_dim=4, kmeans_init=False, max_size=64)
    )  # fmt: skip
    audio = AudioTokenizer(
        AudioConfig(sample_rate=bad_inputs.AUDIO_SR, n_filters=4, ratios=[4, 4], dimension=8,
                    lstm=0, n_q=3, codebook_size=16, kmeans_iters=1)
    )  # fmt: skip
    TokenizerSet(text_tokenizer, image, audio, image_max_grid=16).save(out)
    return out


def _line_of(corpus: Path) -> dict[str, int]:
    """Record id -> line number, for the records whose line parses."""
    lines = {}
    for n, raw in enumerate(corpus.read_bytes().splitlines(), start=1):
        try:
            obj = json.loads(raw.decode("utf-8", errors="surrogatepass"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("id") not in lines:
            lines[obj.get("id")] = n
    return lines


def _validator_counts() -> dict[str, int]:
    """The records of the bad corpus the document validator refuses, by reason."""
    counts: dict[str, int] = {}
    for stage, reason in EXPECTED.values():
        if stage == "validate":
            counts[reason] = counts.get(reason, 0) + 1
    for reason in LINE_FAILURES:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _kept(out: Path) -> set[str]:
    return {i for sh in sorted((out / "shards").glob("*.done.json"))
            for i in json.loads(sh.read_text())["doc_ids"]}  # fmt: skip


def _tiny_checkpoint(tokenizer_dir: Path, folder: Path, block_size: int) -> Path:
    """A tiny random transformer over the tokenizer set, saved as an inference checkpoint."""
    from native_mm.checkpoint import save_checkpoint
    from native_mm.model import ModelConfig, Transformer

    tset = TokenizerSet.load(tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny", vocab_size=tset.vocab.size, n_layer=1, n_embd=32, block_size=block_size
    )
    path = folder / "model.pt"
    save_checkpoint(path, Transformer(cfg), tset.manifest())
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """A verb through ``cli.main`` -> (exit code, stderr); never a traceback."""
    rc = cli(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# a VQ-GAN small enough to train a step in a test
TINY_VQGAN = ["model.channels=8", "model.channel_mult=[1,1,1]", "model.z_channels=8",
              "model.codebook_size=32", "batch_size=4", "sample_every=0", "sample_count=4",
              "trainer.max_steps=1", "trainer.log_every=1"]  # fmt: skip
