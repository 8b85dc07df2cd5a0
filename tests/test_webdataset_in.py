"""WebDataset tar shards read by ``tokenize`` (issue 18): samples become documents in the
orders asked for, and every bad sample or shard is a counted skip naming SHARD.tar/KEY."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from native_mm.samples_in import parse_orders
from native_mm.webdataset_in import convert
from tests.reliability_common import tiny_tokenizer_set


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _wav(seed: int) -> bytes:
    buf = io.BytesIO()
    x = np.random.default_rng(seed).normal(0, 0.1, 2000).astype(np.float32)
    sf.write(buf, x, 8000, format="WAV")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    good = [(f"s/{k:03d}.png", _png(k)) for k in range(6)]
    members = []
    for k, (name, data) in enumerate(good):
        members += [(name, data), (f"s/{k:03d}.txt", f"a photo number {k}".encode())]
    members += [
        ("s/100.jpg", _png(100)), ("s/100.json", json.dumps({"caption": "json caption"}).encode()),
        ("s/101.wav", _wav(1)), ("s/101.txt", b"a spoken clip"),
        ("s/102.png", _png(2)),  # no caption
        ("s/103.png", b""), ("s/103.txt", b"empty image"),
        ("s/104.png", _png(3)[:40]), ("s/104.txt", b"truncated png"),  # tokenize skips it
        ("s/105.txt", b"caption without media"),
        ("s/106.png", _png(4)), ("s/106.json", b"{not json"),
    ]  # fmt: skip
    a = _tar(tmp_path / "a.tar", members)
    b = tmp_path / "b.tar"
    b.write_bytes(_tar(tmp_path / "full.tar", members).read_bytes()[:3000])  # cut mid-member
    return [a, b]


def test_orders_parse_and_refuse_nonsense():
    assert parse_orders("text,image=0.7; image,text=0.3") == [
        (("text", "image"), 0.7), (("image", "text"), 0.3)]  # fmt: skip
    for bad in ("", "image", "image,audio", "text,video", "text,image=x", "text,image=0"):
        with pytest.raises(ValueError, match="order"):
            parse_orders(bad)


def test_samples_become_documents_in_both_orders(shards, tmp_path):
    docs, report = convert(shards[:1], tmp_path / "out", "text,image;image,text;text,audio")
    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    ids = {r["id"] for r in rows}
    assert {f"a.tar/s/{k:03d}" for k in range(6)} <= ids and "a.tar/s/101" in ids
    firsts = {next(iter(r["segments"][0])) for r in rows if r["id"].startswith("a.tar/s/00")}
    assert firsts == {"text", "image"}  # both orders drawn
    by_id = {r["id"]: r["segments"] for r in rows}
    assert {"text": "json caption"} in by_id["a.tar/s/100"]
    assert {"text": "a spoken clip"} in by_id["a.tar/s/101"]
    for r in rows:  # extracted media exist, relative to the documents file
        for seg in r["segments"]:
            for kind in ("image", "audio"):
                if kind in seg:
                    assert (docs.parent / seg[kind]).stat().st_size > 0
    assert dict(report.counts) == {"no_caption": 1, "bad_media": 1, "no_media": 1,
                                   "bad_caption": 1}  # fmt: skip
    named = " ".join(m for _, m in report.messages)
    assert all(f"a.tar/s/{k}" in named for k in (102, 103, 105, 106))
    again, _ = convert(shards[:1], tmp_path / "again", "text,image;image,text;text,audio")
    assert again.read_text() == docs.read_text()  # the same order per sample on every run


def test_a_folder_reads_as_its_tar(shards, tmp_path):
    """A folder of key.ext files (a tar unpacked) gives the tar's documents and skips."""
    folder = tmp_path / "a"  # named like the tar's stem, so sample names match too
    with tarfile.open(shards[0]) as tf:
        tf.extractall(folder, filter="data")
    from_tar, r1 = convert(shards[:1], tmp_path / "t", "text,image;image,text;text,audio")
    from_dir, r2 = convert([folder], tmp_path / "d", "text,image;image,text;text,audio")
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in (from_tar, from_dir)]
    assert [r["id"].replace("a.tar/", "a/") for r in rows[0]] == [r["id"] for r in rows[1]]
    texts = [[[s["text"] for s in r["segments"] if "text" in s] for r in f] for f in rows]
    assert texts[0] == texts[1]  # the orders may differ: they are drawn from the names
    assert r1.counts == r2.counts


def test_tokenize_reads_tars_and_reports_every_skip(shards, tmp_path, text_tokenizer):
    from native_mm.training.shards import tokenize

    toks = tiny_tokenizer_set(text_tokenizer, tmp_path / "tok")
    out = tmp_path / "shards"
    m = tokenize(shards, out, toks, workers=0, log=lambda s: None, orders="text,image;audio,text")
    skipped = json.loads((out / "skipped.json").read_text())["records"]
    text = json.dumps(skipped)
    assert re.search(r"b\.tar: (truncated|corrupt) tar shard", text), text  # the cut shard
    assert "a.tar/s/104" in text  # the truncated PNG: skipped by tokenize, named
    assert m["sources"]["a"]["documents"] >= 7 and m["modality_tokens"]["image"] > 0
    assert m["modality_tokens"]["audio"] > 0


def test_tokenizer_trainers_read_tars_for_their_media(shards):
    """The image and audio trainers take a tar as they take a folder: every image or clip,
    captioned or not; the bad samples are counted in the data report."""
    from native_mm.tokenizers.audio_train import AudioDataSpec, list_audio
    from native_mm.tokenizers.image_train import image_paths
    from native_mm.tokenizers.trainer import DataReport

    report = DataReport("images")
    images = image_paths(shards[0], report)
    names = sorted(p.name for p in images)
    assert len(images) == 9 and all(
        p.is_file() for p in images
    )  # 000-005, 100, 102 and 104 (truncated)
    assert any("s_102" in n for n in names)  # no caption: still an image to learn from
    clips = list_audio(AudioDataSpec(source=str(shards[0])))
    assert len(clips) == 1 and clips[0].suffix == ".wav"


def test_a_conversion_is_done_once_until_the_input_changes(shards, tmp_path):
    from native_mm.inputs import to_documents

    docs, first = to_documents(shards[0], tmp_path / "c", "text,image;text,audio")
    stamp = docs.stat().st_mtime_ns
    again, cached = to_documents(shards[0], tmp_path / "c", "text,image;text,audio")
    assert again.stat().st_mtime_ns == stamp  # read back, not rewritten
    assert cached.as_dict() == first.as_dict()  # the same counts and named skips
    _, other = to_documents(shards[0], tmp_path / "c", "image,text")  # other options: redone
    assert again.stat().st_mtime_ns != stamp
    with tarfile.open(shards[0], "a") as tf:  # the input grows: redone
        info = tarfile.TarInfo("s/200.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"extra"))
    _, grown = to_documents(shards[0], tmp_path / "c", "image,text")
    assert grown.counts["no_media"] == other.counts["no_media"] + 1
