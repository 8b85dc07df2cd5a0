"""The digits application's data, as sources the library's trainers can name.

Tokenizer specs refer to these by ``module:function`` (see :mod:`native_mm.sources`):

    data: native_mm.apps.digits.sources:digit_images          # image VQ-GAN
    source: native_mm.apps.digits.sources:speech_augmented    # audio EnCodec
    generators: [native_mm.apps.digits.sources:digit_sentences]  # text BPE
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from native_mm.sources import LabeledMedia
from native_mm.tokenizers.base import Waveform

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = (
    "{w}", "{d}", "{W}", "the digit {d}", "the digit {w}", "a handwritten {w}",
    "a handwritten {d}", "the number {w}", "this is a {w}.", "this is the digit {d}.",
    "draw a {w}", "write the digit {d}", "say {w}", "someone says {w}", "a spoken {w}",
    "{W}.", "it is a {w}", "the image shows a {w}", "the voice says {w}", "{d} is {w}",
)  # fmt: skip


def digit_sentences() -> Iterator[str]:
    """A small corpus of phrases about the digits 0-9 (varied wording) for the text BPE."""
    for template in _TEMPLATES:
        for d, w in enumerate(WORDS):
            yield template.format(d=d, w=w, W=w.capitalize())
    for a in range(10):
        for b in range(10):
            yield f"{a} + {b} = {a + b}; {WORDS[a]} plus {WORDS[b]}"


@functools.lru_cache(maxsize=1)
def _image_judge():  # an SVM on the original 8x8 train digits; fitted once per process
    from native_mm.apps.digits.images import DigitJudge

    return DigitJudge()


def judge_images(images: Sequence, labels: Sequence[int]) -> float:
    """Digit-judge accuracy of PIL images of any size (area-averaged back to 8x8)."""
    from native_mm.apps.digits.images import to_8x8

    return _image_judge().accuracy(np.stack([to_8x8(m) for m in images]), np.asarray(labels))


def digit_images(split: str) -> LabeledMedia:
    """scikit-learn's digits of a split as 8x8 ``L`` images, labelled and judged."""
    from native_mm.apps.digits import images

    x, y = images.load(split)
    return LabeledMedia([images.to_pil(a, size=8) for a in x], y.tolist(), judge_images)


@functools.lru_cache(maxsize=4)
def _speech_judge(root: str):
    from native_mm.apps.digits.audio_classifier import train_on_manifest

    return train_on_manifest(root)


def speech_at(root: str | Path, split: str) -> LabeledMedia:
    """Spoken-digit clips of ``split`` under a spoken-digits directory (``manifest.csv``),
    judged by a classifier trained on that directory's training voices."""
    from native_mm.apps.digits import speech as sp

    clips = sp.read_manifest(root, split=split)
    clf = _speech_judge(str(root))

    def judge(waves: Sequence[Waveform], labels: Sequence[int]) -> float:
        sr = waves[0].sample_rate
        return clf.accuracy([w.samples.reshape(-1) for w in waves], list(labels), sr)

    return LabeledMedia([c.path for c in clips], [c.digit for c in clips], judge)


def speech(split: str) -> LabeledMedia:
    """The committed spoken digits: ``train``, ``heldout`` voices or ``unseen_synth``."""
    from native_mm.apps.digits.speech import DEFAULT_DIR

    return speech_at(DEFAULT_DIR, split)


AUGMENTED_COPIES = 3  # augmented copies per training clip for the audio codec


def speech_augmented(split: str) -> LabeledMedia:
    """:func:`speech`, with the training split widened by :data:`AUGMENTED_COPIES` copies of
    each clip in recorded conditions (room, noise, telephone line, level, silence:
    :func:`native_mm.apps.digits.augment.augment_audio`), so that the codec learns to
    keep words in the signals the language model is given. The copies are written once to
    a cache folder keyed by the manifest and seed (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    import hashlib
    import os
    import shutil
    import tempfile

    import soundfile as sf

    from native_mm.apps.digits.augment import augment_audio
    from native_mm.apps.digits.speech import DEFAULT_DIR

    plain = speech(split)
    if split != "train":
        return plain
    manifest = (Path(DEFAULT_DIR) / "manifest.csv").read_bytes()
    key = hashlib.sha256(manifest + f"copies={AUGMENTED_COPIES},seed=0".encode()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "native-mm" / f"speech_augmented_{key[:16]}"
    names = [f"{i:05d}_{k}.wav" for i in range(len(plain.items)) for k in range(AUGMENTED_COPIES)]
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building_"))
        rng = np.random.default_rng(0)
        for i, path in enumerate(plain.items):
            x, sr = sf.read(path, dtype="float32")
            for k in range(AUGMENTED_COPIES):
                sf.write(tmp / f"{i:05d}_{k}.wav", augment_audio(x, sr, rng), sr, subtype="PCM_16")
        try:
            tmp.rename(folder)  # complete or absent: a killed build leaves only .building_*
        except OSError:  # another process finished first: same bytes
            shutil.rmtree(tmp, ignore_errors=True)
    items = list(plain.items) + [str(folder / n) for n in names]
    labels = list(plain.labels) + [y for y in plain.labels for _ in range(AUGMENTED_COPIES)]
    return LabeledMedia(items, labels, plain.judge)
