"""Does an audio tokenizer keep the words of speech it was not trained on?

The spoken-digit judge (trained on the training voices' originals) scores originals and
each tokenizer's reconstructions from its first ``--levels`` RVQ levels (the language model
uses 1), on the held-out espeak-ng voices, the same clips in recorded conditions
(augment.py, seeded) and flite, the synthesizer family kept out of training. With
``--probe``, a second table reads the tokens themselves, as the language model does: a
logistic regression on each clip's first-level code vectors (six time segments + mean and
spread), fitted on the training voices' tokens, scored on the same three sets:

    python benchmarks/codec_robustness.py tokenizers/audio/speech8k_wide OTHER_DIR [--probe]
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


def token_features(tok: AudioTokenizer, x: np.ndarray) -> np.ndarray:
    """The first RVQ level's code vectors of a clip -> six segment means + mean + std."""
    codes = tok.encode(Waveform(x[None], speech.SAMPLE_RATE))[0]
    vec = tok.code_vectors()[0][codes]  # (T, D)
    segs = np.array_split(vec, 6)
    return np.concatenate([s.mean(0) for s in segs] + [vec.mean(0), vec.std(0)])


def token_probe(tok: AudioTokenizer, sets: dict) -> list[str]:
    """Accuracy of a token-reading classifier fitted on the training voices' originals."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = speech.read_manifest(split="train")
    feats = np.stack([token_features(tok, sf.read(c.path, dtype="float32")[0]) for c in train])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(feats, [c.digit for c in train])
    out = []
    for xs, ys in sets.values():
        pred = clf.predict(np.stack([token_features(tok, x) for x in xs]))
        out.append(f"{100 * np.mean(pred == np.asarray(ys)):.1f}%")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizers", nargs="+", help="audio tokenizer directories")
    p.add_argument("--levels", type=int, default=1, help="RVQ levels decoded")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe", action="store_true", help="also the token-reading probe")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    judge = train_on_manifest()
    toks = {t: AudioTokenizer.load(t) for t in a.tokenizers}
    print("| clips | originals | " + " | ".join(f"{t}, {a.levels} level(s)" for t in toks) + " |")
    print("| --- | ---: |" + " ---: |" * len(toks))
    sets = clip_sets()
    for name, (xs, ys) in sets.items():
        row = [f"{100 * judge.accuracy(xs, ys):.1f}%"]
        for tok in toks.values():
            rec = [tok.decode(tok.encode(Waveform(x[None], speech.SAMPLE_RATE))[: a.levels])
                   for x in xs]  # fmt: skip
            row.append(f"{100 * judge.accuracy([r.samples.mean(axis=0) for r in rec], ys):.1f}%")
        print(f"| {name} ({len(xs)}) | " + " | ".join(row) + " |", flush=True)
    if a.probe:
        print("\nToken probe (level-1 code vectors, fitted on the training voices):\n")
        print("| clips | " + " | ".join(toks) + " |")
        print("| --- |" + " ---: |" * len(toks))
        cols = [token_probe(tok, sets) for tok in toks.values()]
        for i, (name, (xs, _)) in enumerate(sets.items()):
            print(f"| {name} ({len(xs)}) | " + " | ".join(c[i] for c in cols) + " |")


if __name__ == "__main__":
    main()
