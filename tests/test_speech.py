"""The spoken digits: which synthesizers train, which stay unseen, and the augmentation
that stands between a synthesizer's clean clip and a real recording."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from native_mm.apps.digits import augment, speech, voices

SR = speech.SAMPLE_RATE


def test_the_unseen_family_and_its_speakers_never_train():
    clips = speech.read_manifest()
    by_split = Counter(c.split for c in clips)
    assert by_split["unseen_synth"] == 200 and by_split["heldout"] == 220
    train_synths = {c.voice.split(":")[0] for c in clips if c.split == "train"}
    assert {"festival", "piper"} <= train_synths and "flite" not in train_synths
    unseen = [c for c in clips if c.split == "unseen_synth"]
    assert {c.voice for c in unseen} == {f"flite:{v}" for v in speech.FLITE_VOICES}
    # festival's kal and slt are flite's speakers: none of them in training
    assert not [c for c in clips if c.split == "train" and ("kal" in c.voice or "slt" in c.voice)]
    held = {c.voice for c in clips if c.split == "heldout"}
    assert not held & {c.voice for c in clips if c.split == "train"}
    for c in clips[::97]:  # every file is there, 8 kHz mono
        x, sr = sf.read(c.path, dtype="float32")
        assert sr == SR and x.ndim == 1 and 0.5 < np.abs(x).max() <= 0.81


def test_trim_and_normalise_cuts_silence_and_sets_the_peak():
    tone = 0.3 * np.sin(np.arange(SR // 2) * 2 * np.pi * 440 / SR)
    x = np.concatenate([np.zeros(SR), tone, np.zeros(SR)]).astype(np.float32)
    y = voices.trim_and_normalise(x, SR)
    assert len(tone) <= len(y) <= len(tone) + 2 * 0.03 * SR + 2 * 80
    assert np.abs(y).max() == pytest.approx(0.8, abs=1e-6)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_a_synthesizer_speaks_a_word_at_8k():
    x = voices.espeak("seven", "en-us+m3", 150, 50)
    assert 0.2 * SR < len(x) < 1.5 * SR and np.abs(x).max() == pytest.approx(0.8, abs=1e-6)


def _clip(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.6 * SR)) / SR
    voiced = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 20))
    return (0.8 * voiced / np.abs(voiced).max() + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def test_augment_audio_is_seeded_bounded_and_varied():
    x = _clip()
    a = augment.augment_audio(x, SR, np.random.default_rng(1))
    b = augment.augment_audio(x, SR, np.random.default_rng(1))
    c = augment.augment_audio(x, SR, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)  # the corpus seed decides every draw
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= 1.0
    assert len(a) != len(c) or not np.allclose(a, c)
    outs = [augment.augment_audio(x, SR, np.random.default_rng(s)) for s in range(12)]
    assert len({len(o) for o in outs}) > 6  # speed and silence vary the length
    peaks = [float(np.abs(o).max()) for o in outs]
    assert max(peaks) / min(peaks) > 2  # levels vary


def _centroid(x: np.ndarray) -> float:
    mag = np.abs(np.fft.rfft(x))
    return float((mag * np.arange(mag.size)).sum() / mag.sum())


def test_vocal_tract_moves_formants_and_keeps_the_length():
    x = _clip()
    same = augment.vocal_tract(x, np.random.default_rng(0), 1.0, 1.0)
    np.testing.assert_allclose(same[300:-300], x[300:-300], atol=1e-4)  # alpha 1: identity
    up = augment.vocal_tract(x, np.random.default_rng(0), 1.1, 1.1)
    down = augment.vocal_tract(x, np.random.default_rng(0), 0.9, 0.9)
    assert len(up) == len(x) == len(down)
    assert _centroid(down) < _centroid(x) < _centroid(up)


def test_telephone_mu_law_keeps_the_signal():
    x = _clip()
    y = augment._mu_law(x, SR)
    assert np.abs(y - x).max() < 0.05 and not np.array_equal(x, y)


def test_silence_pads_with_faint_noise():
    x = _clip()
    y = augment.silence(x, SR, np.random.default_rng(3), most=0.25)
    assert len(x) <= len(y) <= len(x) + 2 * SR // 4
    starts = [a for a in range(len(y) - len(x) + 1) if np.array_equal(y[a : a + len(x)], x)]
    assert len(starts) == 1  # the word itself, untouched, between two quiet stretches
    a = starts[0]
    assert np.abs(np.concatenate([y[:a], y[a + len(x) :]])).max(initial=0) < 0.02


def test_speech_augmented_adds_cached_copies_for_training_only(tmp_path, monkeypatch):
    from native_mm.apps.digits import sources

    clips = speech.read_manifest(split="train")[:2]
    few = sources.LabeledMedia([str(c.path) for c in clips], [c.digit for c in clips], None)
    monkeypatch.setattr(sources, "speech", lambda split: few)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    media = sources.speech_augmented("train")
    k = sources.AUGMENTED_COPIES
    assert len(media.items) == 2 * (1 + k) and media.items[:2] == few.items
    assert media.labels == few.labels + [few.labels[0]] * k + [few.labels[1]] * k
    copies = [sf.read(p, dtype="float32")[0] for p in media.items[2:]]
    assert all(len(c) > 0.2 * SR for c in copies)
    stamp = [Path(p).stat().st_mtime_ns for p in media.items[2:]]
    again = sources.speech_augmented("train")  # read back from the cache, not rebuilt
    assert again.items == media.items
    assert [Path(p).stat().st_mtime_ns for p in again.items[2:]] == stamp
    assert sources.speech_augmented("heldout") is few  # evaluation splits stay as recorded
