"""Documents JSONL: schema, path safety, errors naming file/line/field, skip mode, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from native_mm.cli import main as cli_main
from native_mm.documents import (
    Document,
    DocumentError,
    Segment,
    SkipReport,
    read_documents,
)

GOOD = {"id": "good", "segments": [{"text": "a seven"}, {"image": "media/7.png"}]}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A corpus directory with media files (content is irrelevant to validation)."""
    root = tmp_path / "corpus"
    (root / "media").mkdir(parents=True)
    (root / "media" / "7.png").write_bytes(b"png")
    (root / "media" / "seven.wav").write_bytes(b"wav")
    (tmp_path / "outside.png").write_bytes(b"secret")
    return root


def write_jsonl(path: Path, lines: list) -> Path:
    """Write records (dicts are JSON-encoded, str/bytes written as is), one per line."""
    raw = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        raw += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
    path.write_bytes(raw)
    return path


def test_valid_documents(corpus):
    path = write_jsonl(
        corpus / "docs.jsonl",
        [
            GOOD,
            "",  # blank lines are ignored
            {
                "id": "mixed",
                "meta": {"lang": "en"},  # unknown top-level keys are metadata
                "segments": [
                    {"audio": "media/seven.wav", "loss": False},
                    {"text": "数字 😀 \x00 \r\n"},
                    {"image": "media/../media/7.png"},  # `..` that stays inside is fine
                ],
            },
        ],
    )
    docs = list(read_documents(path))
    assert [d.id for d in docs] == ["good", "mixed"]
    assert docs[0].source == f"{path}:1" and docs[1].source == f"{path}:3"
    media = str(corpus.resolve() / "media")
    assert docs[0].segments == [
        Segment("text", "a seven"),
        Segment("image", os.path.join(media, "7.png")),
    ]
    assert docs[1].segments[0] == Segment("audio", os.path.join(media, "seven.wav"), loss=False)
    assert docs[1].segments[1].value == "数字 😀 \x00 \r\n"
    assert isinstance(docs[1], Document)


def test_paths_relative_to_jsonl_not_cwd(corpus, monkeypatch, tmp_path):
    write_jsonl(corpus / "docs.jsonl", [GOOD])
    monkeypatch.chdir(tmp_path)
    (doc,) = read_documents(Path("corpus") / "docs.jsonl")
    assert Path(doc.segments[1].value).read_bytes() == b"png"


def test_symlink_inside_corpus_is_fine(corpus):
    (corpus / "link.png").symlink_to(corpus / "media" / "7.png")
    path = write_jsonl(corpus / "docs.jsonl", [{"id": "a", "segments": [{"image": "link.png"}]}])
    assert len(list(read_documents(path))) == 1


# (bad record on line 2, expected field, expected reason). Line 1 is always a good record.
BAD_CASES = {
    "malformed_json": ('{"id": "x", "segments": [', None, "malformed_json"),
    "deep_nesting": ("[" * 100_000 + "]" * 100_000, None, "malformed_json"),
    "huge_integer": ('{"id": "x", "n": ' + "9" * 10_000 + "}", None, "malformed_json"),
    "not_an_object": ('["id", "segments"]', None, "not_an_object"),
    "invalid_utf8": (b'{"id": "x", "segments": [{"text": "\xff\xfe"}]}', None, "invalid_utf8"),
    "missing_id": ({"segments": [{"text": "a"}]}, "id", "missing_field"),
    "missing_segments": ({"id": "x"}, "segments", "missing_field"),
    "non_string_id": ({"id": 7, "segments": [{"text": "a"}]}, "id", "bad_id"),
    "empty_id": ({"id": "", "segments": [{"text": "a"}]}, "id", "bad_id"),
    "segments_not_list": ({"id": "x", "segments": {"text": "a"}}, "segments", "bad_segments"),
    "segment_not_object": ({"id": "x", "segments": ["a"]}, "segments[0]", "bad_segment"),
    "unknown_kind": (
        {"id": "x", "segments": [{"text": "a"}, {"video": "v.mp4"}]},
        "segments[1].video",
        "unknown_kind",
    ),
    "two_kinds": (
        {"id": "x", "segments": [{"text": "a", "image": "media/7.png"}]},
        "segments[0]",
        "bad_segment",
    ),
    "no_kind": ({"id": "x", "segments": [{"loss": False}]}, "segments[0]", "bad_segment"),
    "non_string_text": ({"id": "x", "segments": [{"text": 5}]}, "segments[0].text", "bad_text"),
    "bad_loss": (
        {"id": "x", "segments": [{"text": "a", "loss": "no"}]},
        "segments[0].loss",
        "bad_loss",
    ),
    "missing_media": (
        {"id": "x", "segments": [{"image": "media/8.png"}]},
        "segments[0].image",
        "missing_media",
    ),
    "empty_document": ({"id": "x", "segments": []}, "segments", "empty_document"),
    "only_empty_text": ({"id": "x", "segments": [{"text": ""}]}, "segments", "empty_document"),
    "lone_surrogate_text": (
        '{"id": "x", "segments": [{"text": "a\\ud800b"}]}',
        "segments[0].text",
        "lone_surrogate",
    ),
    "lone_surrogate_id": ('{"id": "\\udfff", "segments": [{"text": "a"}]}', "id", "lone_surrogate"),
    "duplicate_id": ({"id": "good", "segments": [{"text": "b"}]}, "id", "duplicate_id"),
    "absolute_path": (
        {"id": "x", "segments": [{"image": "/etc/passwd"}]},
        "segments[0].image",
        "path_escape",
    ),
    "dotdot_escape": (
        {"id": "x", "segments": [{"audio": "../../etc/passwd"}]},
        "segments[0].audio",
        "path_escape",
    ),
    "dotdot_existing_file": (
        {"id": "x", "segments": [{"image": "media/../../outside.png"}]},
        "segments[0].image",
        "path_escape",
    ),
    "symlink_outside": (
        {"id": "x", "segments": [{"image": "media/evil.png"}]},
        "segments[0].image",
        "path_escape",
    ),
    "empty_path": ({"id": "x", "segments": [{"image": ""}]}, "segments[0].image", "bad_path"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_names_file_line_field(corpus, case):
    record, field, reason = BAD_CASES[case]
    (corpus / "media" / "evil.png").symlink_to(corpus.parent / "outside.png")
    path = write_jsonl(corpus / "docs.jsonl", [GOOD, record, GOOD | {"id": "after"}])
    with pytest.raises(DocumentError) as info:
        list(read_documents(path))
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{path}:2:")  # file and line
    assert (err.path, err.line, err.field, err.reason) == (str(path), 2, field, reason)
    if field is not None:
        assert f"field {field!r}" in str(err)

    # Skip mode: the bad record is counted, the records around it are kept.
    report = SkipReport()
    docs = list(read_documents(path, on_error="skip", report=report))
    assert [d.id for d in docs] == ["good", "after"]
    assert report.counts == {reason: 1} and report.documents == 2
    assert report.messages == [(f"{path}:2", str(err))]


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DocumentError, match="no such documents file"):
        list(read_documents(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="on_error"):
        list(read_documents(tmp_path / "none.jsonl", on_error="ignore"))


def test_skip_mode_counts_a_dirty_corpus(corpus):
    lines = [GOOD]
    for i in range(5):
        lines += [
            "{broken",
            {"id": f"ok{i}", "segments": [{"text": f"t{i}"}, {"audio": "media/seven.wav"}]},
            {"id": f"m{i}", "segments": [{"image": f"media/missing{i}.png"}]},
            {"id": "good", "segments": [{"text": "dup"}]},
        ]
    path = write_jsonl(corpus / "dirty.jsonl", lines)
    report = SkipReport(max_messages=4)
    docs = list(read_documents(path, on_error="skip", report=report))
    assert len(docs) == 6 and report.documents == 6
    assert report.counts == {"malformed_json": 5, "missing_media": 5, "duplicate_id": 5}
    assert report.skipped == 15 and len(report.messages) == 4  # counts stay complete
    assert report.segments == {"text": 6, "image": 1, "audio": 5}
    assert report.as_dict()["reasons"]["duplicate_id"] == 5
    summary = report.summary()
    assert "documents: 6" in summary and "missing_media: 5" in summary
    # check_media=False keeps documents whose media is absent (path safety still applies).
    kept = list(read_documents(path, on_error="skip", check_media=False))
    assert len(kept) == 11


def test_cli_validate(corpus, capsys):
    good = write_jsonl(corpus / "good.jsonl", [GOOD])
    assert cli_main(["validate", str(good), "--no-media"]) == 0  # records only
    out = capsys.readouterr().out
    assert "documents: 1" in out and "text 1, image 1, audio 0" in out and "skipped: 0" in out
    assert cli_main(["validate", str(good)]) == 1  # its media/7.png holds no image
    assert "7.png: not a readable image" in capsys.readouterr().out

    bad = write_jsonl(
        corpus / "bad.jsonl", [GOOD, "{oops", {"id": "x", "segments": [{"video": "a"}]}]
    )
    assert cli_main(["validate", str(bad), "--no-media"]) == 1
    out = capsys.readouterr().out
    assert "skipped: 2" in out and "malformed_json: 1" in out and "unknown_kind: 1" in out
    assert f"{bad}:3: field 'segments[0].video'" in out

    assert cli_main(["validate", str(corpus / "none.jsonl")]) == 1
    assert "none.jsonl: no such documents file" in capsys.readouterr().err


def test_validate_flags_an_image_tokenize_would_refuse_as_too_large(tmp_path, capsys):
    """A 9000x9000 PNG (81M pixels, a few KB on disk) is over the tokenizer's
    decompression-bomb guard: validate names it as tokenize would skip it."""
    from PIL import Image

    from native_mm.documents import media_header_problem

    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    reason, msg = media_header_problem("image", str(tmp_path / "big.png"))
    assert reason == "bad_media" and "9000x9000 image exceeds max_pixels" in msg
    assert media_header_problem("image", str(tmp_path / "small.png")) is None
    docs = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "segments": [{"image": "big.png"}]}])
    assert cli_main(["validate", str(docs)]) == 1
    assert "9000x9000 image exceeds max_pixels" in capsys.readouterr().out


LINES = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40),
        # near-valid records: random JSON values in the schema's places
        st.fixed_dictionaries(
            {"id": st.one_of(st.text(max_size=3), st.integers()), "segments": st.lists(
                st.dictionaries(st.sampled_from(["text", "image", "audio", "loss", "x"]),
                                st.one_of(st.text(max_size=8), st.booleans(), st.none()),
                                max_size=2), max_size=3)}
        ).map(json.dumps),
    ),
    max_size=5,
)  # fmt: skip


def _fuzz_validator(root: Path, lines: list) -> None:
    # Arbitrary bytes never crash the reader: every bad line is a counted DocumentError.
    path = root / "f.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
                                for x in lines))  # fmt: skip
    report = SkipReport()
    list(read_documents(path, on_error="skip", report=report))

    def blank(raw: bytes) -> bool:
        try:
            return not raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return False

    expected = sum(not blank(raw) for raw in path.read_bytes().split(b"\n"))
    assert report.skipped + report.documents == expected  # each line kept or counted


@settings(max_examples=300, deadline=None)
@given(LINES)
def test_fuzz_validator_only_raises_document_errors(tmp_path_factory, lines):
    _fuzz_validator(tmp_path_factory.mktemp("fuzz"), lines)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(LINES)
def test_fuzz_validator_10k(tmp_path_factory, lines):
    _fuzz_validator(tmp_path_factory.mktemp("fuzz"), lines)
