"""An independent spoken-digit classifier: log-mel statistics + logistic regression.

Used to judge the audio tokenizer: trained on ORIGINAL clips of the training voices only,
then scored on original vs reconstructed clips of held-out voices. It shares nothing with
the tokenizer (no learned features), so a reconstruction that keeps its accuracy keeps
what makes the words recognisable.

Features of a clip (8 kHz mono, any length): a 40-band log-mel spectrogram (32 ms window,
10 ms hop), time-normalised into 6 equal segments (segment means capture the word's
temporal shape), plus the per-band mean, std and delta std over the whole clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 8000
N_MELS = 40
N_SEGMENTS = 6


def features(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Feature vector of one mono clip ``(N,)`` -> ``(N_MELS * (N_SEGMENTS + 3),)``."""
    import torch
    import torchaudio
    import torchaudio.functional as AF

    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        x = AF.resample(x, sample_rate, SAMPLE_RATE)
    n_fft = 256
    # A clip shorter than the window (a model may end a generated span after a few
    # frames, or produce none) is zero-padded: the STFT's reflection padding needs more.
    x = torch.nn.functional.pad(x, (0, max(0, n_fft - x.numel())))
    x = x / (x.abs().max() + 1e-6)  # loudness-invariant
    mel = torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=n_fft, hop_length=80, n_mels=N_MELS, f_min=50, f_max=3800
    )(x)
    logmel = torch.log(mel + 1e-4).numpy()  # (M, F)
    # Drop frames far below the loudest one so leading/trailing silence does not count.
    energy = logmel.mean(0)
    keep = energy > energy.max() - 6.0
    idx = np.nonzero(keep)[0]
    logmel = logmel[:, idx[0] : idx[-1] + 1] if len(idx) else logmel
    segs = np.array_split(np.arange(logmel.shape[1]), N_SEGMENTS)
    seg_means = [logmel[:, s].mean(1) if len(s) else logmel.mean(1) for s in segs]
    delta = np.diff(logmel, axis=1) if logmel.shape[1] > 1 else np.zeros_like(logmel)
    stats = [logmel.mean(1), logmel.std(1), delta.std(1)]
    return np.concatenate(seg_means + stats).astype(np.float32)


class DigitClassifier:
    """Standardised features + multinomial logistic regression (scikit-learn)."""

    def __init__(self, c: float = 1.0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))

    def fit(self, clips: Sequence[np.ndarray], labels: Sequence[int], sr: int = SAMPLE_RATE):
        self.pipe.fit(np.stack([features(c, sr) for c in clips]), np.asarray(labels))
        return self

    def predict(self, clips: Sequence[np.ndarray], sr: int = SAMPLE_RATE) -> np.ndarray:
        return self.pipe.predict(np.stack([features(c, sr) for c in clips]))

    def accuracy(
        self, clips: Sequence[np.ndarray], labels: Sequence[int], sr: int = SAMPLE_RATE
    ) -> float:
        return float(np.mean(self.predict(clips, sr) == np.asarray(labels)))


def train_on_manifest(root: str | None = None) -> DigitClassifier:
    """Fit the classifier on the original clips of the training voices only."""
    import soundfile as sf

    from native_mm.apps.digits.speech import DEFAULT_DIR, read_manifest

    clips = read_manifest(root or DEFAULT_DIR, split="train")
    audio = [sf.read(c.path, dtype="float32")[0] for c in clips]
    return DigitClassifier().fit(audio, [c.digit for c in clips])


if __name__ == "__main__":
    import soundfile as sf

    from native_mm.apps.digits.speech import DEFAULT_DIR, read_manifest

    clf = train_on_manifest()
    for split in ("train", "heldout", "unseen_synth"):
        cl = read_manifest(DEFAULT_DIR, split=split)
        acc = clf.accuracy([sf.read(c.path, dtype="float32")[0] for c in cl], [c.digit for c in cl])
        print(f"{split}: accuracy on originals {acc:.3f} ({len(cl)} clips)")
