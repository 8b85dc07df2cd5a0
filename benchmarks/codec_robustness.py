"""Does an audio tokenizer keep the words of speech it was not trained on?

The spoken-digit judge (trained on the training voices' originals) scores originals and
each tokenizer's reconstructions from its first ``--levels`` RVQ levels (the language model
uses 1), on the held-out espeak-ng voices, the same clips in recorded conditions
(augment.py, seeded) and flite, the synthesizer family kept out of training:

    python benchmarks/codec_robustness.py tokenizers/audio/speech8k /path/to/other/tokenizer
"""

from __future__ import annotations

import argparse

import numpy as np
import soundfile as sf
import torch

from native_mm.apps.digits import speech
from native_mm.apps.digits.audio_classifier import train_on_manifest
from native_mm.apps.digits.augment import augment_audio
from native_mm.tokenizers.audio import AudioTokenizer
from native_mm.tokenizers.base import Waveform


def clip_sets() -> dict[str, tuple[list[np.ndarray], list[int]]]:
    held = speech.read_manifest(split="heldout")
    xs = [sf.read(c.path, dtype="float32")[0] for c in held]
    ys = [c.digit for c in held]
    rng = np.random.default_rng(5)
    unseen = speech.read_manifest(split="unseen_synth")
    return {
        "held-out espeak-ng voices": (xs, ys),
        "the same, augmented": ([augment_audio(x, speech.SAMPLE_RATE, rng) for x in xs], ys),
        "flite (unseen synthesizer)": (
            [sf.read(c.path, dtype="float32")[0] for c in unseen],
            [c.digit for c in unseen],
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizers", nargs="+", help="audio tokenizer directories")
    p.add_argument("--levels", type=int, default=1, help="RVQ levels decoded")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    judge = train_on_manifest()
    toks = {t: AudioTokenizer.load(t) for t in a.tokenizers}
    print("| clips | originals | " + " | ".join(f"{t}, {a.levels} level(s)" for t in toks) + " |")
    print("| --- | ---: |" + " ---: |" * len(toks))
    for name, (xs, ys) in clip_sets().items():
        row = [f"{100 * judge.accuracy(xs, ys):.1f}%"]
        for tok in toks.values():
            rec = [tok.decode(tok.encode(Waveform(x[None], speech.SAMPLE_RATE))[: a.levels])
                   for x in xs]  # fmt: skip
            row.append(f"{100 * judge.accuracy([r.samples.mean(axis=0) for r in rec], ys):.1f}%")
        print(f"| {name} ({len(xs)}) | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
