"""Parquet files and Hugging Face ``save_to_disk`` folders read by ``tokenize`` (issue 18),
written by ``datasets`` itself: rows become documents in the orders asked, and every bad
row or file is a counted skip naming FILE/ROW."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from native_mm.hf_in import DatasetError, convert, parse_columns
from tests.reliability_common import tiny_tokenizer_set
from tests.test_webdataset_in import _png, _wav

datasets = pytest.importorskip("datasets")


def _image_rows(n: int = 6) -> dict:
    rows = {"caption": [f"a photo number {k}" for k in range(n)],
            "image": [{"bytes": _png(k), "path": None} for k in range(n)]}  # fmt: skip
    rows["caption"] += [None, "no image", "truncated png", "a named file"]
    rows["image"] += [
        {"bytes": _png(90), "path": None},
        None,
        {"bytes": _png(91)[:40], "path": None},  # tokenize skips it, naming the row
        {"bytes": None, "path": "beside.png"},  # read from the dataset's folder
    ]
    return rows


def _dataset(rows: dict, audio: bool = False):
    feats = {"caption": datasets.Value("string")}
    for col in rows:
        if col != "caption":
            feats[col] = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(feats))
    # Image/Audio features from stored bytes (datasets would need torchcodec to encode audio)
    ds = ds.cast_column("image", datasets.Image()) if "image" in rows else ds
    return ds.cast_column("audio", datasets.Audio(decode=False)) if audio else ds


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A Parquet file and a save_to_disk folder written by datasets, a truncated Parquet."""
    monkeypatch.chdir(tmp_path)  # datasets finds beside.png from here; the reader, beside it
    (tmp_path / "beside.png").write_bytes(_png(92))
    parquet = tmp_path / "photos.parquet"
    _dataset(_image_rows()).to_parquet(str(parquet))
    speech = {"caption": [f"clip {k}" for k in range(4)],
              "audio": [{"bytes": _wav(k), "path": None} for k in range(4)]}  # fmt: skip
    folder = tmp_path / "speech"
    _dataset(speech, audio=True).save_to_disk(str(folder))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet.read_bytes()[:-200])  # the footer is gone
    return parquet, folder, cut


def test_rows_become_documents_and_bad_rows_are_named(inputs, tmp_path):
    parquet, folder, cut = inputs
    docs, report = convert(
        [parquet, folder, cut], tmp_path / "out", "text,image;image,text;audio,text"
    )
    rows = {r["id"]: r["segments"] for r in map(json.loads, docs.read_text().splitlines())}
    assert {f"photos.parquet/{k}" for k in (0, 1, 2, 3, 4, 5, 8, 9)} <= rows.keys()
    assert {f"speech/{k}" for k in range(4)} <= rows.keys()
    firsts = {next(iter(rows[f"photos.parquet/{k}"][0])) for k in range(6)}
    assert firsts == {"text", "image"}  # both orders drawn
    assert rows["speech/2"] == [{"audio": rows["speech/2"][0]["audio"]}, {"text": "clip 2"}]
    for segs in rows.values():  # media exist with a suffix their readers know
        for seg in segs:
            for kind in ("image", "audio"):
                if kind in seg:
                    assert (docs.parent / seg[kind]).suffix in (".png", ".wav")
                    assert (docs.parent / seg[kind]).stat().st_size > 0
    assert dict(report.counts) == {"no_caption": 1, "no_media": 1, "corrupt_file": 1}
    named = " ".join(m for _, m in report.messages)
    assert "photos.parquet/6" in named and "photos.parquet/7" in named and "cut.parquet" in named
    again, _ = convert([parquet, folder], tmp_path / "again", "text,image;image,text;audio,text")
    assert again.read_text().splitlines() == docs.read_text().splitlines()[: len(rows)]


def test_columns_by_name_and_clear_errors(tmp_path):
    table = pa.table({"title": ["a seven", "a two"], "photo": [_png(1), _png(2)],
                      "caption": ["wrong", "wrong"]})  # fmt: skip
    pq.write_table(table, tmp_path / "plain.parquet")
    with pytest.raises(DatasetError, match="no image or audio column"):
        convert([tmp_path / "plain.parquet"], tmp_path / "o1")
    docs, report = convert([tmp_path / "plain.parquet"], tmp_path / "o2", "text,image",
                           columns="text=title,image=photo")  # fmt: skip
    segs = [json.loads(line)["segments"] for line in docs.read_text().splitlines()]
    assert [s[0]["text"] for s in segs] == ["a seven", "a two"] and report.skipped == 0
    with pytest.raises(DatasetError, match="no column 'picture' for image"):
        convert([tmp_path / "plain.parquet"], tmp_path / "o3", columns="image=picture")
    with pytest.raises(ValueError, match="KIND=COLUMN"):
        parse_columns("video=x")
    dd = datasets.DatasetDict({"train": _dataset({"caption": ["a"], "image": [
        {"bytes": _png(1), "path": None}]})})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match="give one split's folder: .*dd/train"):
        convert([tmp_path / "dd"], tmp_path / "o4")


def test_tokenize_reads_datasets_and_reports_every_skip(inputs, tmp_path, text_tokenizer):
    from native_mm.training.shards import tokenize

    parquet, folder, cut = inputs
    toks = tiny_tokenizer_set(text_tokenizer, tmp_path / "tok")
    out = tmp_path / "shards"
    m = tokenize([parquet, folder, cut], out, toks, workers=0, log=lambda s: None,
                 orders="text,image;audio,text")  # fmt: skip
    text = json.dumps(json.loads((out / "skipped.json").read_text())["records"])
    for name in ("photos.parquet/6", "photos.parquet/7", "photos.parquet/8", "cut.parquet"):
        assert name in text, name  # row 8: the truncated PNG, skipped by the encoder
    assert m["sources"]["photos"]["documents"] == 7 and m["sources"]["speech"]["documents"] == 4
    assert m["modality_tokens"]["image"] > 0 and m["modality_tokens"]["audio"] > 0


def test_the_image_trainer_reads_a_parquet_file(inputs):
    from native_mm.tokenizers.image_train import image_paths
    from native_mm.tokenizers.trainer import DataReport

    report = DataReport("photos")
    images = image_paths(inputs[0], report)
    assert len(images) == 9 and all(p.is_file() for p in images)  # row 6 uncaptioned: kept
    assert report.counts == {"no_media": 1}  # row 7: a caption without an image
