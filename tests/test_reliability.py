"""Reliability: the bad-input corpus through every verb (the table in RELIABILITY.md),
checkpoint checksums, long audio. Every message names the file or record; no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from native_mm.cli import main as cli
from tests.bad_inputs import EXPECTED, LINE_FAILURES
from tests.reliability_common import (
    REPO,
    TINY_VQGAN,
    _flip_byte,
    _kept,
    _line_of,
    _run,
    _validator_counts,
    tiny_tokenizer_set,
)


# ---- 1. the bad-input corpus through every verb ------------------------------------------
def test_tokenize_skips_each_bad_record_with_a_counted_reason(tokenized, corpus):
    out, rc, err = tokenized
    assert rc == 0, err
    assert "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = json.loads((out / "skipped.json").read_text())
    kept = _kept(out)
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
    want_counts = _validator_counts()
    assert counts == want_counts
    invalid = [r for r in skipped["records"] if "id" not in r]
    assert len(invalid) == sum(want_counts.values()) == skipped["count"] - len(encode_skips)
    for r in invalid:
        assert r["message"].startswith(f"{corpus}:"), r
    by_reason: dict[str, int] = {}
    for r in invalid:  # each refused record carries the validator's reason key
        by_reason[r["validator_reason"]] = by_reason.get(r["validator_reason"], 0) + 1
    assert by_reason == want_counts
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


def test_tokenize_refuses_missing_or_corrupt_tokenizers_and_inputs(tokenizer_dir, corpus,
                                                                    tmp_path, capsys):  # fmt: skip
    import shutil

    bad_tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, bad_tok)
    weights = bad_tok / "image" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    cases = [
        (corpus, tmp_path / "nope", "nope: no vocabulary manifest"),
        (corpus, bad_tok, "weights.pt: checksum mismatch"),
        (tmp_path / "nope.jsonl", tokenizer_dir, "nope.jsonl: no such documents file"),
    ]
    for jsonl, tok, message in cases:
        rc = cli(["tokenize", str(jsonl), "--tokenizers", str(tok), "--out",
                  str(tmp_path / "out"), "--workers", "0"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err, err


def test_validate_names_every_bad_record(corpus, capsys):
    assert cli(["validate", str(corpus), "--show", "100", "--no-media"]) == 1
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


def test_validate_opening_media_predicts_what_tokenize_skips(corpus, tokenized, capsys):
    """validate reads each media file's header: the records it flags are exactly the
    validator's plus media tokenize refuses; no record tokenize keeps is flagged."""
    from native_mm.documents import SkipReport, read_documents

    report = SkipReport()
    list(read_documents(corpus, on_error="skip", report=report, open_media=True))
    lines, by_line = _line_of(corpus), {}
    for source, _ in report.messages:
        by_line[int(source.rsplit(":", 1)[1])] = source
    flagged = {doc_id for doc_id, n in lines.items() if n in by_line}
    expected_validate = {i for i, (stage, _) in EXPECTED.items() if stage == "validate"}
    encode = {i for i, (stage, _) in EXPECTED.items() if stage == "encode"}
    kept = {i for i, (stage, _) in EXPECTED.items() if stage == "kept"}
    assert expected_validate & set(lines) <= flagged
    assert not flagged & kept, flagged & kept  # no false alarm
    predicted = flagged & encode
    # what a header cannot show: NaN samples, a JPEG cut after its header
    assert encode - predicted <= {"audio-nan", "jpeg-truncated", "jpeg-corrupt"}, encode - predicted
    assert cli(["validate", str(corpus)]) == 1
    assert f"bad_media: {len(predicted)}" in capsys.readouterr().out


def test_validate_missing_file_is_one_line_error(tmp_path, capsys):
    assert cli(["validate", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err


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


def test_generate_refuses_a_prompt_longer_than_the_context(checkpoint, tokenizer_dir, tmp_path,
                                                           capsys):  # fmt: skip
    rc = cli(["generate", "--ckpt", str(checkpoint), "--tokenizers", str(tokenizer_dir),
              "--text", "lorem ipsum " * 600, "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "the model takes 1022 (block_size=1024 less 2" in err, err
    assert "Traceback" not in err


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


# ---- the other entry points: tokenizer training and fit over the dirty corpus ---------------
def test_text_tokenizer_training_counts_bad_lines_and_records(corpus, tmp_path, capsys):
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_bytes(b"good line\n\xff\xfe not UTF-8\nanother line caf\xc3\xa9\n")
    out = tmp_path / "text"
    argv = ["tokenizer", "train", "text", "--config", str(REPO / "tokenizers/text/default.yaml"),
            "--out", str(out), "--input", str(corpus), "--input", str(bad_txt),
            "vocab_size=400"]  # fmt: skip
    assert cli(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    log = json.loads((out / "train_log.json").read_text())
    assert log["skipped_bad_utf8_lines"] == 1
    # media are not opened here: every record the validator refuses except missing media
    refused = [r for s, r in EXPECTED.values() if s == "validate" and r != "missing_media"]
    assert log["skipped_documents"] == len(refused) + len(LINE_FAILURES)


def test_fit_on_the_dirty_corpus_shards(tokenized, tmp_path, capsys):
    """Documents longer than the context (a 30k-token audio clip, 1,600-token text) are cut
    into training windows by packing; the run trains and checkpoints normally."""
    from tests.doubles import fit_args, step_losses

    out_dir, _, _ = tokenized
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["tokens"] > 30 * 32  # far longer than one 32-token context
    assert cli(fit_args(out_dir, tmp_path / "run", 3)) == 0
    losses = step_losses(tmp_path / "run")
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) for v in losses.values())


def test_fit_refuses_a_corrupted_shard_naming_it(tokenized, tmp_path, capsys):
    import shutil

    from tests.doubles import fit_args

    src, _, _ = tokenized
    bad = tmp_path / "shards"
    shutil.copytree(src, bad)
    victim = max((bad / "shards").glob("*.ids.bin"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[3] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert cli(fit_args(bad, tmp_path / "run", 2)) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "corrupted" in err and "Traceback" not in err


# ---- 5. eval, image/audio tokenizer training, checkpoint checksums, long audio -------------


def test_eval_refuses_bad_checkpoints_tokenizers_and_out_dirs(
    checkpoint, tokenizer_dir, text_tokenizer, tmp_path, capsys
):
    import shutil

    from native_mm.io import checksum_path

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    flipped = tmp_path / "flipped.pt"  # one byte changed after it was written
    shutil.copy(checkpoint, flipped)
    shutil.copy(checksum_path(checkpoint), checksum_path(flipped))
    _flip_byte(flipped)
    other = tiny_tokenizer_set(text_tokenizer, tmp_path / "other_set", seed=1)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = tmp_path / "eval"
    cases = [
        (tmp_path / "missing.ckpt", tokenizer_dir, out, "missing.ckpt: no such checkpoint file"),
        (truncated, tokenizer_dir, out, "truncated.ckpt: cannot load checkpoint"),
        (foreign, tokenizer_dir, out, "foreign.ckpt: not a native-mm checkpoint"),
        (flipped, tokenizer_dir, out, "flipped.pt: corrupted checkpoint (sha256"),
        (checkpoint, other, out, f"{checkpoint.name}: audio tokenizer fingerprint mismatch"),
        (checkpoint, tmp_path / "nope", out, "nope: no vocabulary manifest there"),
        (checkpoint, tokenizer_dir, a_file, "a_file: --out exists and is not a directory"),
        (checkpoint, tokenizer_dir, a_file / "sub", "a_file/sub: cannot create the output dir"),
    ]
    for ckpt, tok, dest, message in cases:
        rc, err = _run(["eval", "--ckpt", str(ckpt), "--tokenizers", str(tok), "--out", str(dest)],
                       capsys)  # fmt: skip
        assert rc == 1 and message in err, (message, err)


def test_checksum_survives_a_kill_between_its_two_renames(tmp_path, monkeypatch):
    import native_mm.io as nio

    path = tmp_path / "last.ckpt"
    nio.write_checked(path, nio.torch_bytes({"step": 1}))

    def killed(p, data):  # the process dies after the checksum file was renamed into place
        raise KeyboardInterrupt

    monkeypatch.setattr(nio, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        nio.write_checked(path, nio.torch_bytes({"step": 2}))
    monkeypatch.undo()
    assert nio.load_torch(path) == {"step": 1}  # the old file still verifies (previous_sha256)
    nio.write_checked(path, nio.torch_bytes({"step": 3}))
    assert nio.load_torch(path) == {"step": 3}
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"last\.ckpt: corrupted checkpoint"):
        nio.load_torch(path)


def test_checkpoint_write_removes_temp_files_of_a_killed_write(tmp_path):
    import native_mm.io as nio
    from native_mm.training.checkpoint_io import ChecksummedCheckpointIO

    stale = [tmp_path / ".last.ckpt.k1ll3d.tmp", tmp_path / ".last.ckpt.sha256.json.x.tmp"]
    keep = [tmp_path / ".step0000003.ckpt.k1ll3d.tmp", tmp_path / "last.ckpt.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half written")
    nio.write_checked(tmp_path / "last.ckpt", nio.torch_bytes({"step": 1}))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert nio.load_torch(tmp_path / "last.ckpt") == {"step": 1}
    # Lightning's checkpoint IO owns its folder: step checkpoints' temp files go too
    ChecksummedCheckpointIO().save_checkpoint({"step": 4}, tmp_path / "step0000004.ckpt")
    assert [p.exists() for p in keep] == [False, True]


def test_fit_checkpoints_carry_checksums_and_a_corrupted_one_is_refused(
    text_shards_dir, tmp_path, capsys
):
    from native_mm.checkpoint import load_checkpoint
    from native_mm.io import checksum_path, verify_checked
    from tests.doubles import fit_args

    out = tmp_path / "run"
    assert cli(fit_args(text_shards_dir, out, 3)) == 0
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step0000003.ckpt"]
    # one checksum per checkpoint: the removed step checkpoints took theirs with them
    assert sorted((out / "checkpoints").glob("*.sha256.json")) == [checksum_path(p) for p in ckpts]
    assert all(verify_checked(p) for p in ckpts)
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # plain data only
    _flip_byte(last)
    with pytest.raises(ValueError, match=r"last\.ckpt: corrupted checkpoint"):
        load_checkpoint(last)
    rc, err = _run(fit_args(text_shards_dir, out, 5, "--ckpt_path", "last"), capsys)
    assert rc == 1 and "last.ckpt: corrupted checkpoint" in err, err


def test_tokenize_skips_audio_longer_than_max_seconds(tokenizer_dir, corpus, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    import soundfile

    from native_mm.tokenizers.audio import read_audio
    from native_mm.tokenizers.base import MediaTooLong

    out = tmp_path / "out"
    rc, _ = _run(["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
                  "--workers", "0", "--max-audio-seconds", "10"], capsys)  # fmt: skip
    assert rc == 0
    records = json.loads((out / "skipped.json").read_text())["records"]
    too_long = [r for r in records if r["reason"] == "MediaTooLong"]
    assert [r["id"] for r in too_long] == ["audio-long"]
    assert f"docs.jsonl:{_line_of(corpus)['audio-long']}" in too_long[0]["message"]
    assert "long.wav: 20.0 s of audio is longer than max_seconds=10" in too_long[0]["message"]
    assert _kept(out) == {k for k, (s, _) in EXPECTED.items() if s == "kept"} - {"audio-long"}
    # the duration comes from the header: no sample of a too-long file is read
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: pytest.fail("samples were read"))
    with pytest.raises(MediaTooLong, match="long.wav"):
        read_audio(corpus.parent / "media" / "long.wav", max_seconds=10)


# image files of the bad corpus that the image reader refuses
BAD_IMAGES = {"truncated.png", "zero.png", "corrupt.png", "truncated.jpg", "zero.jpg",
              "corrupt.jpg", "notes.png", "bomb.png"}  # fmt: skip


def test_image_tokenizer_training_skips_and_counts_bad_images(corpus, tmp_path, capsys):
    from native_mm.tokenizers.image import ImageTokenizer
    from native_mm.tokenizers.image_train import ImageTrainSpec, build_dataset
    from native_mm.tokenizers.trainer import DataReport

    # A folder: every image file of the bad corpus (a_dir.png is a directory, not a file).
    media = corpus.parent / "media"
    report = DataReport(media)
    ds = build_dataset(ImageTrainSpec(resolution=16), str(media), train=True, report=report)
    assert {Path(r["file"]).name for r in report.records} == BAD_IMAGES
    # good.png/.jpg, 1x1, 16-bit, CMYK and the symlink (a folder is the user's own: followed)
    assert len(ds) == report.used == 6 and dict(report.counts) == {"MediaError": 8}
    # The documents JSONL through the verb: refused records and unreadable images are
    # counted in data_report.json, the 4 good images train and the tokenizer is saved.
    out = tmp_path / "image"
    rc, err = _run(["tokenizer", "train", "image", "--config",
                    str(REPO / "tokenizers/image/digits.yaml"), "--out", str(out),
                    f"data={corpus}", *TINY_VQGAN], capsys)  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "data_report.json").read_text())["train"]
    assert rep["used"] == 4 and rep["reasons"] == {"MediaError": 8, **_validator_counts()}
    assert f"train data {corpus}: 4 used, 20 skipped" in err
    files = {Path(r["file"]).name: r["message"] for r in rep["records"] if "file" in r}
    assert set(files) == BAD_IMAGES and all(name in m for name, m in files.items())
    assert "bomb.png: decompression bomb refused" in files["bomb.png"]
    assert all(r["message"].startswith(f"{corpus}:") for r in rep["records"] if "source" in r)
    assert ImageTokenizer.load(out).codebook_size == 32


def test_audio_tokenizer_training_skips_and_counts_bad_audio(corpus, tmp_path, capsys):
    from native_mm.tokenizers.audio import AudioTokenizer

    out = tmp_path / "audio"
    argv = ["tokenizer", "train", "audio", "--config", str(REPO / "tokenizers/audio/tiny.yaml"),
            "--out", str(out), f"data.source={corpus}", "data.max_seconds=10",
            "trainer.max_steps=1", "n_samples=1"]  # fmt: skip
    rc, err = _run(argv, capsys)
    assert rc == 0
    rep = json.loads((out / "data_report.json").read_text())["train"]
    # used: good, 44.1 kHz stereo, 6 channels, 11.025 kHz (resampled and mixed down)
    assert rep["used"] == 4
    assert rep["reasons"] == {"MediaError": 4, "MediaTooLong": 1, **_validator_counts()}
    files = {Path(r["file"]).name: r for r in rep["records"] if "file" in r}
    assert set(files) == {"unreadable.wav", "empty.wav", "nan.wav", "truncated.wav", "long.wav"}
    assert all(name in r["message"] for name, r in files.items())
    assert files["long.wav"]["reason"] == "MediaTooLong"
    assert "NaN or infinite" in files["nan.wav"]["message"]
    assert "no audio samples" in files["empty.wav"]["message"]
    assert AudioTokenizer.load(out).codebook_size == 16
    # a resume from a corrupted last.ckpt is refused, naming it
    _flip_byte(out / "checkpoints" / "last.ckpt")
    rc, err = _run([*argv, "trainer.max_steps=2"], capsys)
    assert rc == 1 and "last.ckpt: corrupted checkpoint" in err, err


def test_every_torch_load_in_the_package_is_weights_only():
    """Project-written files are only ever unpickled with ``weights_only=True`` (all go
    through ``native_mm.io.load_torch``); this checks the source for any other call."""
    import ast

    calls = []
    for path in sorted((REPO / "native_mm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "load"
                and getattr(f.value, "id", "") == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), calls
    assert all(where.startswith("native_mm/io.py:") for where, _ in calls), calls  # one reader
