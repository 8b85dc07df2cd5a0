"""Reliability: a dirty corpus through every verb, kills mid-write, non-finite training, fuzzing.

The bad-input corpus is built by :mod:`tests.bad_inputs` (see RELIABILITY.md for the table).
Verbs are driven through ``native_mm.cli.main``, as a user would run them, and every message
must name the file or record it is about; no Python traceback may reach the user.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from native_mm.cli import main as cli
from native_mm.tokenizers.base import TokenizerSet
from tests import bad_inputs
from tests.bad_inputs import EXPECTED, LINE_FAILURES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, text_tokenizer) -> Path:
    """Real text BPE + tiny random VQ-GAN and EnCodec, saved as a tokenizer set."""
    from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
    from native_mm.tokenizers.image import ImageConfig, ImageTokenizer

    torch.manual_seed(0)
    image = ImageTokenizer(
        ImageConfig(factor=4, channels=64, channel_mult=(1, 1, 1), z_channels=8,
                    codebook_size=32, codebook_dim=4, kmeans_init=False, max_size=64)
    )  # fmt: skip
    audio = AudioTokenizer(
        AudioConfig(sample_rate=bad_inputs.AUDIO_SR, n_filters=4, ratios=[4, 4], dimension=8,
                    lstm=0, n_q=3, codebook_size=16, kmeans_iters=1)
    )  # fmt: skip
    out = tmp_path_factory.mktemp("tok") / "tokenizers"
    TokenizerSet(text_tokenizer, image, audio, image_max_grid=16).save(out)
    return out


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

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli(argv)
    return out, rc, err.getvalue()


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


# ---- 1. the bad-input corpus through every verb ------------------------------------------
def test_tokenize_skips_each_bad_record_with_a_counted_reason(tokenized, corpus):
    out, rc, err = tokenized
    assert rc == 0, err
    assert "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = json.loads((out / "skipped.json").read_text())
    kept = {i for sh in sorted((out / "shards").glob("*.done.json"))
            for i in json.loads(sh.read_text())["doc_ids"]}  # fmt: skip
    assert kept == {k for k, (stage, _) in EXPECTED.items() if stage == "kept"}
    assert manifest["documents"] == len(kept)
    # Tokenizer refusals: one skipped.json record each, its reason and a message that names
    # the JSONL line, the record id and the media file.
    lines = _line_of(corpus)
    encode_skips = {r["id"]: r for r in skipped["records"] if "id" in r}
    want = {k: v for k, (stage, v) in EXPECTED.items() if stage == "encode"}
    assert {k: r["reason"] for k, r in encode_skips.items()} == want
    for doc_id, r in encode_skips.items():
        assert f"docs.jsonl:{lines[doc_id]}" in r["message"] and repr(doc_id) in r["message"]
        assert "/media/" in r["message"]
    # Validator refusals: counted by reason in the manifest's inputs, one message each.
    counts = manifest["inputs"][0]["skipped"]
    want_counts: dict[str, int] = {}
    for stage, reason in EXPECTED.values():
        if stage == "validate":
            want_counts[reason] = want_counts.get(reason, 0) + 1
    for reason in LINE_FAILURES:
        want_counts[reason] = want_counts.get(reason, 0) + 1
    assert counts == want_counts
    invalid = [r for r in skipped["records"] if "id" not in r]
    assert len(invalid) == sum(want_counts.values()) == skipped["count"] - len(encode_skips)
    for r in invalid:
        assert r["message"].startswith(f"{corpus}:"), r
    for reason, text in LINE_FAILURES.items():
        assert any(text in r["message"] for r in invalid), reason


def test_tokenize_rerun_on_the_bad_corpus_is_a_no_op(tokenized, tokenizer_dir, corpus, capsys):
    out, _, _ = tokenized
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    argv = ["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
            "--workers", "0", "--docs-per-shard", "4"]  # fmt: skip
    assert cli(argv) == 0
    assert "(6 already done)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before


def test_validate_names_every_bad_record(corpus, capsys):
    assert cli(["validate", str(corpus), "--show", "100"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    n_bad = sum(1 for s, _ in EXPECTED.values() if s == "validate") + len(LINE_FAILURES)
    assert f"skipped: {n_bad}" in out.out
    bad_lines = [line for line in out.out.splitlines() if line.startswith(f"  {corpus}:")]
    assert len(bad_lines) == n_bad
    lines = _line_of(corpus)
    for doc_id, (stage, reason) in EXPECTED.items():
        if stage == "validate" and doc_id in lines:
            assert any(f"{corpus}:{lines[doc_id]}:" in b for b in bad_lines), doc_id
        if stage == "validate":
            assert f"{reason}: " in out.out


def test_validate_missing_file_is_one_line_error(tmp_path, capsys):
    assert cli(["validate", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random transformer saved as a plain inference checkpoint."""
    from native_mm.generation import save_checkpoint
    from native_mm.model import ModelConfig, Transformer

    tset = TokenizerSet.load(tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny", vocab_size=tset.vocab.size, n_layer=1, n_embd=32, block_size=1024
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, Transformer(cfg), tset.manifest())
    return path


BAD_PROMPTS = [
    ("image", "truncated.png"), ("image", "zero.png"), ("image", "corrupt.png"),
    ("image", "truncated.jpg"), ("image", "corrupt.jpg"), ("image", "notes.png"),
    ("image", "bomb.png"), ("image", "a_dir.png"), ("image", "nope.png"),
    ("audio", "unreadable.wav"), ("audio", "empty.wav"), ("audio", "nan.wav"),
    ("audio", "truncated.wav"), ("audio", "notes.png"),
]  # fmt: skip


def test_generate_refuses_bad_prompt_files_naming_them(checkpoint, tokenizer_dir, corpus,
                                                       tmp_path, capsys):  # fmt: skip
    media = corpus.parent / "media"
    base = ["generate", "--ckpt", str(checkpoint), "--tokenizers", str(tokenizer_dir),
            "--max-new-tokens", "3", "--output-modality", "text"]  # fmt: skip
    # sanity: the same command with good media works
    for kind, name in [("image", "good.png"), ("image", "cmyk.jpg"), ("audio", "six.wav")]:
        rc = cli([*base, "--text", "hi", f"--{kind}", str(media / name), "--out", str(tmp_path)])
        assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    for kind, name in BAD_PROMPTS:
        rc = cli([*base, "--text", "hi", f"--{kind}", str(media / name), "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 1, (name, err)
        assert name in err and "prompt segment 1" in err and "Traceback" not in err, err


def test_generate_refuses_corrupt_and_foreign_checkpoints(checkpoint, tokenizer_dir, tmp_path,
                                                          capsys):  # fmt: skip
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for ckpt in (truncated, foreign, tmp_path / "missing.pt"):
        rc = cli(["generate", "--ckpt", str(ckpt), "--tokenizers", str(tokenizer_dir),
                  "--text", "hi", "--out", str(tmp_path)])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and ckpt.name in err and "Traceback" not in err, err
