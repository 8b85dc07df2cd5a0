"""The evaluation's prompts: held-out media, corpus wordings, and inputs the model never saw.

:func:`build_items` asks every direction with held-out writers' images and held-out
espeak-ng voices' clips (text prompts in the corpus' own wordings); the six-direction
table. :func:`robustness_items` asks with inputs from outside the training distribution:
every clip of the synthesizer family kept out of training (flite), and requests phrased
with words no training prompt uses (:data:`native_mm.apps.digits.wording.RESERVED`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from native_mm.apps.digits.corpus import AUDIO_PROMPTS, DIRECTIONS, IMAGE_PROMPTS
from native_mm.apps.digits.recipe import EvalConfig
from native_mm.apps.digits.wording import UNSEEN_AUDIO_PROMPTS, UNSEEN_IMAGE_PROMPTS, fill

UNSEEN_SYNTH = "unseen synthesizer"
UNSEEN_WORDING = "unseen wording"


@dataclasses.dataclass
class Item:
    """One prompt of one direction and the digit its answer should show."""

    prompt: list[tuple[str, Any]]  # (kind, value) segments: str, PIL image or Waveform
    digit: int
    wording: str | None = None  # the template a text prompt was filled from


# ---- held-out material -----------------------------------------------------------------
def heldout_images(size: int, split: str = "heldout") -> tuple[list[Any], np.ndarray]:
    """Held-out (or ``split``) digit images as PIL (``size`` px) and their labels."""
    from native_mm.apps.digits import images as digits

    x, y = digits.load(split)
    return [digits.to_pil(im, size) for im in x], y


def heldout_clips(root: str | None = None, split: str = "heldout") -> tuple[list[Any], np.ndarray]:
    """Held-out (or ``split``) voices' clips as :class:`Waveform` and their labels."""
    import soundfile as sf

    from native_mm.apps.digits import speech
    from native_mm.tokenizers.base import Waveform

    clips = speech.read_manifest(root or speech.DEFAULT_DIR, split=split)
    wavs = []
    for c in clips:
        x, sr = sf.read(c.path, dtype="float32", always_2d=True)
        wavs.append(Waveform(x.mean(axis=1)[None], sr))
    return wavs, np.array([c.digit for c in clips])


def _spread(n_total: int, labels: np.ndarray, k: int) -> list[int]:
    """At most ``k`` indices, balanced over the digits, deterministic."""
    if k >= n_total:
        return list(range(n_total))
    per = {d: list(np.flatnonzero(labels == d)) for d in range(10)}
    out: list[int] = []
    i = 0
    while len(out) < k:
        for d in range(10):
            if i < len(per[d]) and len(out) < k:
                out.append(int(per[d][i]))
        i += 1
    return sorted(out)


def build_items(
    cfg: EvalConfig, audio_root: str | None = None, split: str = "heldout"
) -> dict[str, list[Item]]:
    """The prompts of every direction (held-out media, training wordings).

    ``split="train"`` takes the training writers' and voices' media instead: a dev set for
    choosing sampling settings without looking at held-out media.
    """
    imgs, img_y = heldout_images(cfg.image_size, split)
    wavs, wav_y = heldout_clips(audio_root, split)
    ii = _spread(len(imgs), img_y, cfg.max_items)
    aa = _spread(len(wavs), wav_y, cfg.max_items)
    n_text = cfg.max_items
    items: dict[str, list[Item]] = {
        "image->text": [Item([("image", imgs[i])], int(img_y[i])) for i in ii],
        "audio->text": [Item([("audio", wavs[i])], int(wav_y[i])) for i in aa],
        "image->audio": [Item([("image", imgs[i])], int(img_y[i])) for i in ii],
        "audio->image": [Item([("audio", wavs[i])], int(wav_y[i])) for i in aa],
    }
    items["text->image"] = _text_items(IMAGE_PROMPTS, n_text)
    items["text->audio"] = _text_items(AUDIO_PROMPTS, n_text)
    return {d: items[d] for d in DIRECTIONS}


def _text_items(prompts: tuple[str, ...], n: int) -> list[Item]:
    """``n`` requests cycling through the digits, each wording used for ten in a row."""
    out = []
    for j in range(n):
        template = prompts[(j // 10) % len(prompts)]
        out.append(Item([("text", fill(template, j % 10))], j % 10, template))
    return out


def robustness_items(cfg: EvalConfig, audio_root: str | None = None) -> dict[str, dict]:
    """``{group: {direction: [Item]}}``: ``cfg.robustness_items`` unseen-synthesizer clips
    (audio->text, audio->image; a fixed random draw over voices and rates, all 200 by
    default) and as many requests in unseen wordings (text->image, text->audio). Spoken
    digits without an ``unseen_synth`` split give no synthesizer group."""
    n = cfg.robustness_items
    if n <= 0:
        return {}
    groups: dict[str, dict[str, list[Item]]] = {}
    wavs, labels = heldout_clips(audio_root, "unseen_synth")
    if wavs:
        pick = sorted(np.random.default_rng(0).permutation(len(wavs))[:n])
        groups[UNSEEN_SYNTH] = {
            d: [Item([("audio", wavs[i])], int(labels[i])) for i in pick]
            for d in ("audio->text", "audio->image")
        }
    groups[UNSEEN_WORDING] = {
        "text->image": _text_items(UNSEEN_IMAGE_PROMPTS, n),
        "text->audio": _text_items(UNSEEN_AUDIO_PROMPTS, n),
    }
    return groups
