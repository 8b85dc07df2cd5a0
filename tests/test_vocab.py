"""The shared vocabulary: layout, id -> modality lookup, manifest checks."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import (
    AUDIO,
    IMAGE,
    MODALITIES,
    SPECIAL,
    SPECIALS,
    TEXT,
    Vocab,
    VocabError,
    check_fingerprints,
    load_manifest,
)
from tests.codec_doubles import BytesText, CodeAudio, GridImage

sizes = st.builds(
    lambda t, i, a, q, g: Vocab(t, i, a if q else 0, q if a else 0, g),
    st.integers(1, 5000),
    st.integers(0, 5000),
    st.integers(0, 2000),
    st.integers(0, 8),
    st.integers(1, 64),
)


@settings(max_examples=200, deadline=None)
@given(sizes)
def test_ranges_are_contiguous_and_lookup_matches_slow_reference(v):
    spans = sorted((r.start, r.stop) for r in v.ranges.values() if r.size)
    assert spans[0][0] == 0 and spans[-1][1] == v.size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    ids = np.arange(v.size)
    table = v.modality_of(ids)
    for tok in range(0, v.size, max(1, v.size // 97)):  # slow loop reference
        (name,) = [n for n, r in v.ranges.items() if tok in r]
        expect = {"special": SPECIAL, "text": TEXT}.get(name, IMAGE if "image" in name else AUDIO)
        assert table[tok] == expect, (tok, name)
    assert np.iinfo(v.dtype).max >= v.size - 1


def test_layout_order_and_names():
    v = Vocab(text_size=300, image_codes=512, audio_codes=256, audio_levels=4, image_max_grid=16)
    assert v.range("special").size == len(SPECIALS)
    assert v.range("text").start == len(SPECIALS)
    assert v.range("image_grid").start == v.range("text").stop
    assert [v.audio_range(q).start for q in range(4)] == [
        v.range("image").stop + q * 256 for q in range(4)
    ]
    assert v.size == 16 + 300 + 16 + 512 + 4 * 256
    assert v.dtype == np.uint16
    assert MODALITIES[v.modality_of(np.array([v.range("audio3").stop - 1]))[0]] == "audio"
    with pytest.raises(VocabError, match="outside"):
        v.modality_of(np.array([v.size]))


def test_inconsistent_sizes_are_errors():
    with pytest.raises(VocabError, match="both be zero"):
        Vocab(text_size=10, audio_codes=8, audio_levels=0)
    with pytest.raises(VocabError, match="text_size"):
        Vocab(text_size=0)


def test_manifest_round_trip_and_tampered_ranges(tmp_path):
    v = Vocab(text_size=300, image_codes=64, audio_codes=32, audio_levels=2)
    m = v.to_manifest({"text": "aa"})
    assert Vocab.from_manifest(json.loads(json.dumps(m))) == v
    overlapping = json.loads(json.dumps(m))
    overlapping["ranges"]["image"][0] -= 5
    with pytest.raises(VocabError, match="disagree"):
        Vocab.from_manifest(overlapping, source="x.json")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(VocabError, match="manifest.json"):
        load_manifest(tmp_path)


def test_fingerprint_mismatch_names_both():
    m = Vocab(text_size=10).to_manifest({"text": "abc123"})
    check_fingerprints(m, {"text": "abc123"})
    with pytest.raises(VocabError, match="abc123.*def456"):
        check_fingerprints(m, {"text": "def456"}, source="set/manifest.json")


def test_tokenizer_set_manifest_records_fingerprints(tmp_path):
    tset = TokenizerSet(BytesText(), GridImage(128), CodeAudio(64, levels=3), image_max_grid=8)
    m = tset.manifest()
    assert m["sizes"]["audio_levels"] == 3
    assert m["fingerprints"] == tset.fingerprints()
    assert m["size"] == 16 + 256 + 8 + 128 + 3 * 64


def test_added_specials_come_last_and_move_no_id():
    """Specials added for a later stage (chat role markers) take ids after every range, so
    a model trained without them keeps every id's meaning and grows into them."""
    v = Vocab(text_size=300, image_codes=64, audio_codes=32, audio_levels=2)
    g = Vocab(300, 64, 32, 2, added=("<user>", "<assistant>"))
    assert {n: r for n, r in g.ranges.items() if n != "added"} == v.ranges
    assert g.size == v.size + 2 and g.special_id("<assistant>") == v.size + 1
    assert g.describe(v.size) == "<user>" and MODALITIES[g.modality_of([v.size])[0]] == "special"
    assert v.grows_into(g) and not g.grows_into(v) and v.grows_into(v)
    assert not Vocab(301).grows_into(Vocab(300, added=("<user>",)))
    assert Vocab.from_manifest(json.loads(json.dumps(g.to_manifest()))) == g
    assert "added" not in v.to_manifest()  # older manifests and digests stay as they were
    for bad in (("<user>", "<user>"), ("<eos>",), ("user",)):
        with pytest.raises(VocabError, match="added specials"):
            Vocab(10, added=bad)
