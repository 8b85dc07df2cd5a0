"""Sequence codec: spans <-> ids is exact; malformed ids are named errors."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from native_mm.layouts import AudioFrameMajor, Layout
from native_mm.sequence import SequenceCodec, SequenceError, Span, decode_spans, encode_document
from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import AUDIO, BOA, BOI, BOS, EOA, EOI, EOS, IMAGE, PAD, TEXT, Vocab
from tests.codec_doubles import BytesText, CodeAudio, GridImage

VOCAB = Vocab(text_size=500, image_codes=300, audio_codes=40, audio_levels=3, image_max_grid=12)
CODEC = SequenceCodec(VOCAB)


def span_strategy(v: Vocab = VOCAB):
    text = st.lists(st.integers(0, v.text_size - 1), min_size=1, max_size=20).map(
        lambda c: Span("text", np.array(c))
    )
    image = st.tuples(st.integers(1, v.image_max_grid), st.integers(1, v.image_max_grid)).flatmap(
        lambda hw: st.lists(
            st.integers(0, v.image_codes - 1), min_size=hw[0] * hw[1], max_size=hw[0] * hw[1]
        ).map(lambda c: Span("image", np.array(c).reshape(hw)))
    )
    audio = st.integers(0, 15).flatmap(
        lambda t: st.lists(
            st.integers(0, v.audio_codes - 1),
            min_size=t * v.audio_levels,
            max_size=t * v.audio_levels,
        ).map(lambda c: Span("audio", np.array(c, dtype=np.int64).reshape(v.audio_levels, t)))
    )
    return st.one_of(text, image, audio)


def merge_text(spans):
    """Adjacent text spans are one run of text ids: the canonical form of a document."""
    out = []
    for s in spans:
        if out and s.kind == out[-1].kind == "text":
            out[-1] = Span("text", np.concatenate([out[-1].codes, s.codes]))
        else:
            out.append(s)
    return out


@settings(max_examples=1000, deadline=None)
@given(st.lists(span_strategy(), max_size=8))
def test_spans_round_trip_exactly(spans):
    enc = CODEC.encode(spans)
    assert enc.ids[0] == BOS and enc.ids[-1] == EOS
    assert enc.ids.dtype == np.int64 and len(enc.modality) == len(enc.ids)
    assert CODEC.decode(enc.ids) == merge_text(spans)


def test_layout_matches_a_plain_loop_reference():
    img = np.arange(6).reshape(2, 3)
    aud = np.array([[1, 2], [3, 4], [5, 6]])  # Q=3 levels, T=2 frames
    enc = CODEC.encode([Span("text", np.array([7])), Span("image", img), Span("audio", aud)])
    r = VOCAB.ranges
    expect = [BOS, r["text"].start + 7, BOI, r["image_grid"].start + 1, r["image_grid"].start + 2]
    expect += [r["image"].start + c for c in range(6)] + [EOI, BOA]
    for t in range(2):
        for q in range(3):
            expect.append(r[f"audio{q}"].start + aud[q, t])
    expect += [EOA, EOS]
    assert enc.ids.tolist() == expect
    # markers are specials; grid tokens and codes belong to their modality
    assert enc.modality[1] == TEXT and enc.modality[3:11].tolist() == [IMAGE] * 8
    assert enc.modality[13:19].tolist() == [AUDIO] * 6 and enc.modality[[2, 11, 12, 19]].sum() == 0


def test_loss_mask_follows_segment_flags():
    spans = [Span("text", np.array([1, 2])), Span("image", np.zeros((1, 2), int))]
    enc = CODEC.encode(spans, loss=[False, True])
    assert enc.loss_mask.tolist() == [False, False, False] + [True] * 6 + [True]


def test_first_levels_layout_is_an_explicit_option():
    codec = SequenceCodec(VOCAB, Layout(audio=AudioFrameMajor(1)))
    aud = np.array([[1, 2], [3, 4], [5, 6]])
    enc = codec.encode([Span("audio", aud)], bos=False, eos=False)
    assert len(enc.ids) == 2 + 2
    assert codec.decode(enc.ids) == [Span("audio", aud[:1])]
    with pytest.raises(SequenceError, match="audio_levels"):
        SequenceCodec(VOCAB, Layout(audio=AudioFrameMajor(4)))


def ids_of(*spans):
    return CODEC.encode(list(spans), bos=False, eos=False).ids.tolist()


IMG = Span("image", np.arange(4).reshape(2, 2))
AUD = Span("audio", np.ones((3, 2), dtype=np.int64))


@pytest.mark.parametrize(
    "ids, message",
    [
        (ids_of(IMG)[:-1], "not closed by <eoi>"),
        (ids_of(IMG)[:-2] + [EOI], "has 3 codes, needs 4"),
        (ids_of(IMG)[:3] + [VOCAB.ranges["text"].start] * 4 + [EOI], "text id .* inside an image"),
        ([BOI, VOCAB.ranges["image"].start, EOI], "grid tokens"),
        (ids_of(AUD)[:-1], "not closed by <eoa>"),
        (ids_of(AUD)[:-2] + [EOA], "not whole frames"),
        ([BOA] + [VOCAB.ranges["audio1"].start] * 3 + [EOA], "audio level 0 was expected"),
        ([EOI], "outside any span"),
        ([EOS, VOCAB.ranges["text"].start], "after <eos>"),
        ([VOCAB.size], "outside"),
    ],
)
def test_malformed_sequences_name_the_position(ids, message):
    with pytest.raises(SequenceError, match=message):
        CODEC.decode(ids)


def test_non_strict_decode_drops_bad_span_and_reports_it():
    t = Span("text", np.array([3]))
    ids = ids_of(t) + ids_of(IMG)[:-2] + [EOI] + ids_of(t) + ids_of(AUD) + [EOS, PAD, PAD]
    report = CODEC.decode_report(ids)
    assert [s.kind for s in report.spans] == ["text", "text", "audio"]
    assert len(report.errors) == 1 and "needs 4" in report.errors[0]


def test_documents_round_trip_through_tokenizers(tmp_path):
    tset = TokenizerSet(BytesText(), GridImage(300), CodeAudio(40, levels=3), image_max_grid=12)
    codec = SequenceCodec(tset.vocab)
    img, aud = np.arange(12).reshape(3, 4) % 300, np.arange(15).reshape(3, 5) % 40
    np.save(tmp_path / "a.npy", img)
    np.save(tmp_path / "b.npy", aud)
    seg = lambda kind, value, loss=True: SimpleNamespace(kind=kind, value=value, loss=loss)
    doc = SimpleNamespace(
        id="d1",
        source="docs.jsonl:1",
        segments=[
            seg("text", "héllo 世界 🎉", False),
            seg("image", str(tmp_path / "a.npy")),
            seg("audio", str(tmp_path / "b.npy")),
            seg("text", ""[:0] + "end"),
        ],
    )
    enc = encode_document(doc, tset, codec)
    assert not enc.loss_mask[: 1 + len("héllo 世界 🎉".encode())].any()
    media = decode_spans(codec.decode(enc.ids), tset)
    assert media[0] == "héllo 世界 🎉" and media[3] == "end"
    assert np.array_equal(media[1], img) and np.array_equal(media[2], aud)


def media_segments():
    """Random media-level segments: real text, image/audio code arrays (test doubles)."""
    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
    image = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
        lambda hw: st.lists(
            st.integers(0, 299), min_size=hw[0] * hw[1], max_size=hw[0] * hw[1]
        ).map(lambda c: np.array(c).reshape(hw))
    )
    audio = st.integers(1, 10).flatmap(
        lambda t: st.lists(st.integers(0, 39), min_size=3 * t, max_size=3 * t).map(
            lambda c: np.array(c).reshape(3, t)
        )
    )
    return st.one_of(
        text.map(lambda s: ("text", s)), image.map(lambda a: ("image", a)),
        audio.map(lambda a: ("audio", a)),
    )  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(media_segments(), max_size=6))
def test_documents_round_trip_with_the_real_text_tokenizer(text_tokenizer, segments):
    """document -> ids -> document is exact (adjacent text segments read back as one)."""
    tset = TokenizerSet(text_tokenizer, GridImage(300), CodeAudio(40, levels=3), image_max_grid=12)
    codec = SequenceCodec(tset.vocab)
    doc = SimpleNamespace(
        id="d", source="t.jsonl:1", segments=[SimpleNamespace(kind=k, value=v) for k, v in segments]
    )
    expected = []
    for kind, value in segments:
        if expected and kind == "text" == expected[-1][0]:
            expected[-1] = ("text", expected[-1][1] + value)
        else:
            expected.append((kind, value))
    media = decode_spans(codec.decode(encode_document(doc, tset, codec).ids), tset)
    assert len(media) == len(expected)
    for got, (kind, want) in zip(media, expected, strict=True):
        assert got == want if kind == "text" else np.array_equal(got, want)
