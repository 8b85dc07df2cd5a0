"""Helpers for the training tests: a doubles tokenizer set, corpora and shard dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from native_mm.tokenizers.base import MediaError, TokenizerSet
from native_mm.training.shards import tokenize, write_shards_from_ids
from native_mm.vocab import Vocab
from tests.codec_doubles import BytesText, CodeAudio, GridImage

WORDS = ["the", "a", "cat", "dog", "sees", "one", "two", "red", "blue", "image", "sound", "of"]


class CheckedImage(GridImage):
    """Image double that rejects bad arrays like a real tokenizer (MediaError)."""

    def encode(self, media):
        codes = np.load(media)
        if codes.ndim != 2:
            raise MediaError(f"{media}: expected a 2-D code grid, got shape {codes.shape}")
        return codes.astype(np.int64)


def tokenizer_set() -> TokenizerSet:
    """Bytes text (256), image codes (16 per cell), audio codes (8 x 2 levels)."""
    return TokenizerSet(BytesText(), CheckedImage(16), CodeAudio(8, levels=2), image_max_grid=8)


def write_corpus(root: Path, n_docs: int, seed: int = 0, bad: bool = True) -> Path:
    """A JSONL corpus of interleaved text/image/audio documents (media as .npy codes).

    With ``bad``, adds an invalid record (no segments) and one whose image is 3-D (the
    double tokenizer rejects it at encode time), so both skip paths are exercised.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "media").mkdir(exist_ok=True)
    lines = []
    for i in range(n_docs):
        segs = [{"text": " ".join(rng.choice(WORDS, size=rng.integers(3, 8)))}]
        if i % 2 == 0:
            img = f"media/img{i}.npy"
            np.save(root / img, rng.integers(0, 16, size=(2, 3)))
            segs.append({"image": img})
        if i % 3 == 0:
            aud = f"media/aud{i}.npy"
            np.save(root / aud, rng.integers(0, 8, size=(2, rng.integers(2, 5))))
            segs.append({"text": "sound", "loss": False})
            segs.append({"audio": aud})
        lines.append(json.dumps({"id": f"doc{i}", "segments": segs}))
    if bad:
        lines.insert(3, json.dumps({"id": "broken", "segments": []}))
        np.save(root / "media/bad.npy", np.zeros((2, 2, 2), dtype=np.int64))
        lines.insert(5, json.dumps({"id": "badimg", "segments": [{"image": "media/bad.npy"}]}))
    path = root / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def random_docs(
    vocab: Vocab, n_docs: int, seed: int = 0, min_len: int = 8, max_len: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Text-only documents ``<bos> text... <eos>`` with a learnable pattern (counting mod 7)."""
    rng = np.random.default_rng(seed)
    t0 = vocab.ranges["text"].start
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(min_len, max_len))
        start = int(rng.integers(0, 7))
        body = t0 + (start + np.arange(n)) % 7 + 7 * int(rng.integers(0, 3))
        ids = np.concatenate([[1], body, [2]]).astype(np.int64)
        loss = np.ones(len(ids), bool)
        loss[0] = False
        docs.append((ids, loss))
    return docs


def text_shards(out: Path, n_docs: int = 200, seed: int = 0, text_size: int = 100) -> Path:
    vocab = Vocab(text_size=text_size)
    write_shards_from_ids(out, random_docs(vocab, n_docs, seed), vocab, docs_per_shard=64)
    return out


def corpus_shards(root: Path, n_docs: int = 40, workers: int = 0) -> Path:
    corpus = write_corpus(root / "corpus", n_docs)
    tokenize([corpus], root / "shards", tokenizer_set(), docs_per_shard=8, workers=workers,
             log=lambda s: None)  # fmt: skip
    return root / "shards"


def fit_args(shards: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """``fit`` arguments for a tiny, deterministic CPU run of the CPU recipe."""
    repo = Path(__file__).resolve().parents[1]
    return [
        "fit", "--config", str(repo / "recipes/cpu_small.yaml"),
        "--data.sources", f"[{{path: {shards}}}]",
        "--data.seq_len", "32", "--data.batch_size", "4", "--data.num_workers", "0",
        "--model.arch.block_size", "32", "--model.arch.n_layer", "1",
        "--model.arch.n_embd", "32", "--model.arch.n_head", "2",
        "--model.warmup_steps", "2", "--model.decay_steps", "40", "--model.lr", "0.01",
        "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--run.out_dir", str(out), "--run.logger", "csv", "--run.csv_flush_every", "1",
        "--run.checkpoint_every", "1", "--run.threads", "1",
        *extra,
    ]  # fmt: skip


def step_losses(
    out: Path, key: str = "train/loss_opt", log: str = "metrics.csv"
) -> dict[int, float]:
    """Per-step values of ``key`` from a run's CSV log (``log``: an earlier run's file)."""
    import csv

    with open(out / "csv" / log) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}
