"""Layouts against plain-loop references, their saved form, and how sources combine."""

from __future__ import annotations

import numpy as np
import pytest

from native_mm.layouts import AudioFrameMajor, ImageRaster, Layout, LayoutError
from native_mm.vocab import BOA, BOI, EOA, EOI, Vocab

VOCAB = Vocab(text_size=50, image_codes=20, audio_codes=8, audio_levels=3, image_max_grid=6)


def raster_reference(codes: np.ndarray, v: Vocab) -> list[int]:
    """<boi> grid-h grid-w, then row by row, one code at a time."""
    g0, i0 = v.ranges["image_grid"].start, v.ranges["image"].start
    h, w = codes.shape
    out = [BOI, g0 + h - 1, g0 + w - 1]
    for r in range(h):
        for c in range(w):
            out.append(i0 + int(codes[r, c]))
    return out + [EOI]


def frame_major_reference(codes: np.ndarray, q: int, v: Vocab) -> list[int]:
    """<boa>, then for each frame its first q levels in order, each in its level's range."""
    out = [BOA]
    for t in range(codes.shape[1]):
        for level in range(q):
            out.append(v.audio_range(level).start + int(codes[level, t]))
    return out + [EOA]


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (6, 6)])
def test_image_raster_equals_the_loop_reference_and_round_trips(shape):
    codes = np.random.default_rng(0).integers(0, VOCAB.image_codes, shape)
    ids = ImageRaster().encode(codes, VOCAB)
    assert ids.tolist() == raster_reference(codes, VOCAB)
    back, end, err = ImageRaster().decode(ids, 0, VOCAB)
    assert err == "" and end == len(ids) and np.array_equal(back, codes)
    assert ImageRaster().span_length(*shape) == len(ids)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_audio_frame_major_equals_the_loop_reference_and_round_trips(q):
    codes = np.random.default_rng(q).integers(0, VOCAB.audio_codes, (3, 7))
    layout = AudioFrameMajor(q)
    ids = layout.encode(codes, VOCAB)
    assert ids.tolist() == frame_major_reference(codes, q, VOCAB)
    back, end, err = layout.decode(ids, 0, VOCAB)
    assert err == "" and np.array_equal(back, codes[:q])  # extra levels dropped on encode
    assert layout.span_length(7) == len(ids)
    assert [layout.level_at(i) for i in range(2 * q)] == list(range(q)) * 2


def test_decode_names_the_bad_position():
    ids = AudioFrameMajor(2).encode(np.zeros((2, 3), np.int64), VOCAB)
    ids[4] = ids[3]  # a level-0 code where level 1 belongs
    _, _, err = AudioFrameMajor(2).decode(ids, 0, VOCAB)
    assert err.startswith("position 4:") and "audio level 1 was expected" in err
    ids = ImageRaster().encode(np.zeros((2, 2), np.int64), VOCAB)[:-2]  # cut: no <eoi>
    assert "not closed by <eoi>" in ImageRaster().decode(ids, 0, VOCAB)[2]


def test_layouts_refuse_what_the_vocabulary_cannot_hold():
    with pytest.raises(LayoutError, match="audio_levels=4 but the vocabulary has 3"):
        Layout(audio=AudioFrameMajor(4)).resolved(VOCAB)
    with pytest.raises(LayoutError, match="no image range"):
        Layout(image=ImageRaster()).check(Vocab(text_size=10))
    with pytest.raises(LayoutError, match="outside 1..6"):
        ImageRaster().encode(np.zeros((7, 1), np.int64), VOCAB)


def test_saved_form_round_trips_and_reads_old_manifests():
    layout = Layout.for_vocab(VOCAB, audio_levels=2)
    d = layout.to_dict()
    assert d == {"image": {"name": "raster"}, "audio": {"name": "frame_major", "levels": 2}}
    assert Layout.from_dict(d) == layout
    assert Layout.from_manifest({"layout": d}) == layout
    assert Layout.from_manifest({"audio_levels": 1}).audio == AudioFrameMajor(1)  # older files
    assert Layout.from_manifest({}).resolved(VOCAB) == Layout.for_vocab(VOCAB)
    with pytest.raises(LayoutError, match="shards/manifest.json: no audio layout named 'zz'"):
        Layout.from_dict({"audio": {"name": "zz"}}, "shards/manifest.json")
    with pytest.raises(LayoutError, match="audio layout: .*unexpected keyword"):
        Layout.from_dict({"audio": {"name": "frame_major", "levls": 2}})


def test_merge_leaves_open_kinds_open_and_names_conflicts():
    text_only, one = Layout(), Layout(audio=AudioFrameMajor(1))
    assert Layout.merge({"t": text_only, "a": one}) == one
    with pytest.raises(LayoutError, match="different audio layouts") as err:
        Layout.merge({"a1": one, "a4": Layout(audio=AudioFrameMajor(4))})
    assert "a1" in str(err.value) and "a4" in str(err.value)


def test_find_spans_of_a_document():
    img = ImageRaster().encode(np.zeros((1, 2), np.int64), VOCAB).tolist()
    aud = AudioFrameMajor(1).encode(np.zeros((1, 2), np.int64), VOCAB).tolist()
    ids = np.array([1, 20, *img, 21, *aud, BOI])  # a trailing unclosed opener is no span
    spans = Layout().find_spans(ids)
    assert spans == [(2, 2 + len(img), "image"), (3 + len(img), 3 + len(img) + len(aud), "audio")]
