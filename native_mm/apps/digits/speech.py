"""Spoken digit words ("zero".."nine") synthesized with espeak-ng (and flite, unseen).

Real speech for the audio tokenizer without any download: Debian's ``espeak-ng`` speaks
each digit word in many voices (accent x voice variant), each clip with its own speed and
pitch; clips are trimmed of silence, peak-normalised and stored as 8 kHz mono 16-bit WAV.

Splits (fixed, by voice, so that evaluation measures generalisation to unseen speakers):

    train         espeak-ng voices whose accent and variant are both in the training sets
    heldout       espeak-ng voices with a held-out accent or a held-out variant
    unseen_synth  a different synthesizer (flite), never used for training

Run ``python -m native_mm.apps.digits.speech --out recipes/data/spoken_digits`` to rebuild the
committed clips; ``manifest.csv`` lists path, digit, word, voice, synth, split.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from native_mm import resources

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng accents (``espeak-ng --voices=en``) and voice variants (``--voices=variant``).
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc", "en-029")
VARIANTS = ("m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "m4")
# Held out: a whole accent and two whole variants (one female, one male timbre).
HELDOUT_ACCENTS = frozenset({"en-029"})
HELDOUT_VARIANTS = frozenset({"f4", "m4"})
# flite voices (``flite -lv``), evaluation only: a synthesizer the tokenizer never saw.
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FLITE_STRETCH = (1.0, 1.25)
SAMPLE_RATE = 8000
DEFAULT_DIR = resources.path("recipes/data/spoken_digits")  # shipped with the package


@dataclass(frozen=True)
class Clip:
    """One manifest row: a WAV file and what it says."""

    path: Path  # absolute path of the WAV file
    digit: int  # 0..9
    voice: str  # "en-us+m3" or "flite:slt"
    split: str  # "train" | "heldout" | "unseen_synth"


def voice_split(accent: str, variant: str) -> str:
    """The fixed split of an espeak-ng voice."""
    held = accent in HELDOUT_ACCENTS or variant in HELDOUT_VARIANTS
    return "heldout" if held else "train"


def read_manifest(root: str | Path = DEFAULT_DIR, split: str | None = None) -> list[Clip]:
    """Rows of ``root/manifest.csv`` (optionally one split), with absolute paths.

    Raises:
        FileNotFoundError: the manifest is missing (run ``python -m native_mm.apps.digits.speech``).
    """
    root = Path(root)
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no spoken-digit manifest; "
            f"run `python -m native_mm.apps.digits.speech --out {root}`"
        )
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    clips = [Clip(root / r["path"], int(r["digit"]), r["voice"], r["split"]) for r in rows]
    return [c for c in clips if split is None or c.split == split]


def trim_and_normalise(x: np.ndarray, sr: int, top_db: float = 35.0) -> np.ndarray:
    """Cut leading/trailing silence (frames > ``top_db`` below the peak), peak -> 0.8.

    Args:
        x: mono float samples ``(N,)``.
    """
    hop = max(1, sr // 100)  # 10 ms frames
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -top_db)[0]
    pad = 3  # keep 30 ms around the word
    start = max(0, (loud[0] - pad) * hop)
    end = min(len(x), (loud[-1] + 1 + pad) * hop)
    x = x[start:end]
    return (0.8 * x / max(np.abs(x).max(), 1e-6)).astype(np.float32)


def _to_rate(wav_bytes: bytes) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    x, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    return trim_and_normalise(x, SAMPLE_RATE)


def espeak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speak ``word`` with espeak-ng; returns 8 kHz mono float32 samples."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
        capture_output=True,
        check=True,
    )
    return _to_rate(out.stdout)


def flite(word: str, voice: str, stretch: float) -> np.ndarray:
    """Speak ``word`` with flite (an unseen synthesizer); returns 8 kHz mono samples."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "w.wav"
        subprocess.run(
            [
                "flite",
                "-voice",
                voice,
                "--setf",
                f"duration_stretch={stretch}",
                "-t",
                word,
                "-o",
                str(wav),
            ],
            capture_output=True,
            check=True,
        )
        return _to_rate(wav.read_bytes())


def _jobs(seed: int, with_flite: bool) -> Iterator[tuple[str, str, int, str, callable]]:
    rng = random.Random(seed)
    for accent in ACCENTS:
        for variant in VARIANTS:
            voice = f"{accent}+{variant}"
            for digit, word in enumerate(WORDS):
                speed, pitch = rng.randint(120, 210), rng.randint(25, 75)
                yield (
                    f"{voice}_{digit}",
                    voice,
                    digit,
                    voice_split(accent, variant),
                    lambda w=word, v=voice, s=speed, p=pitch: espeak(w, v, s, p),
                )
    if with_flite:
        for fv in FLITE_VOICES:
            for k, stretch in enumerate(FLITE_STRETCH):
                for digit, word in enumerate(WORDS):
                    yield (
                        f"flite-{fv}-{k}_{digit}",
                        f"flite:{fv}",
                        digit,
                        "unseen_synth",
                        lambda w=word, v=fv, s=stretch: flite(w, v, s),
                    )


def build(out: str | Path, seed: int = 0, with_flite: bool = True) -> list[Clip]:
    """Synthesize every clip into ``out/{split}/`` and write ``out/manifest.csv``."""
    import soundfile as sf

    from native_mm.io import atomic_write

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng not found; install it with `apt-get install espeak-ng`")
    if with_flite and shutil.which("flite") is None:
        print("flite not found: skipping the unseen-synthesizer split (apt-get install flite)")
        with_flite = False
    out = Path(out)
    rows = []
    for name, voice, digit, split, make in _jobs(seed, with_flite):
        rel = Path(split) / f"{name.replace(':', '-')}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, make(), SAMPLE_RATE, subtype="PCM_16")
        rows.append(
            {
                "path": str(rel),
                "digit": digit,
                "word": WORDS[digit],
                "voice": voice,
                "synth": voice.split(":")[0] if ":" in voice else "espeak-ng",
                "split": split,
            }
        )
    with atomic_write(out / "manifest.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return read_manifest(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m native_mm.apps.digits.speech",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default=str(DEFAULT_DIR), help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="seed for per-clip speed/pitch")
    ap.add_argument("--no-flite", action="store_true", help="skip the flite split")
    args = ap.parse_args(argv)
    clips = build(args.out, seed=args.seed, with_flite=not args.no_flite)
    for split in ("train", "heldout", "unseen_synth"):
        sel = [c for c in clips if c.split == split]
        print(f"{split}: {len(sel)} clips, {len({c.voice for c in sel})} voices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
