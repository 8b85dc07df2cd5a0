"""The speech synthesizers behind the spoken digits, each as ``speak(word, ...) -> samples``.

Four families, all installable offline: espeak-ng (formant synthesis, many accents and
voice variants, klatt voices among them), festival (diphone concatenation of a human
speaker's recordings), Piper (a neural voice trained on a human speaker, run on
onnxruntime) and flite (kept out of training: the unseen synthesizer). Every function
returns 8 kHz mono float32 samples, trimmed of silence and peak-normalised, so that clips
differ by voice and not by level or padding.

Only the maintainer script that rebuilds the committed clips
(``python -m native_mm.apps.digits.speech``) calls these; training reads the files.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000

# Voice variants (``espeak-ng --voices=variant``) for the extra training voices: human
# timbres only (no robots, whispers or effects); the held-out f4 and m4 are not here.
ESPEAK_VARIANTS = (
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "edward2",
    "Gene", "Gene2", "gustave", "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4",
    "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco", "Mario", "max",
    "Michael", "michel", "miguel", "Mike", "Nguyen", "pablo", "paul", "pedro", "quincy",
    "rob", "robert", "steph", "steph2", "steph3", "Storm", "zac", "anika", "AnxiousAndy",
    "f1", "f2", "f3", "f5", "grandpa", "grandma", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "m1", "m2", "m3", "m5", "m6", "m7", "m8", "norbert", "sandro",
    "shelby", "travis", "victor",
)  # fmt: skip
# festival's English voices whose speakers flite does not also ship (flite's kal and slt
# are the same speakers as festival's kal_diphone and cmu_us_slt_arctic_hts): training
# on those would leak the unseen synthesizer's speakers.
FESTIVAL_VOICES = ("ked_diphone",)


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


def to_rate(wav_bytes: bytes) -> np.ndarray:
    """A WAV file's bytes -> 8 kHz mono samples, trimmed and normalised."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    x, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    return trim_and_normalise(x, SAMPLE_RATE)


def _run_to_file(cmd: list[str], stdin: str | None = None) -> np.ndarray:
    """Run a synthesizer that writes a WAV file named by ``{out}`` in ``cmd``."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "w.wav"
        cmd = [str(wav) if c == "{out}" else c for c in cmd]
        subprocess.run(cmd, input=stdin, capture_output=True, check=True, text=True)
        return to_rate(wav.read_bytes())


def espeak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speak ``word`` with espeak-ng (``voice`` = "accent+variant")."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
        capture_output=True,
        check=True,
    )
    return to_rate(out.stdout)


def flite(word: str, voice: str, stretch: float) -> np.ndarray:
    """Speak ``word`` with flite (the unseen synthesizer)."""
    return _run_to_file(
        ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", word,
         "-o", "{out}"]
    )  # fmt: skip


def festival(word: str, voice: str, stretch: float) -> np.ndarray:
    """Speak ``word`` with festival's ``text2wave`` and one of its voices."""
    return _run_to_file(
        ["text2wave", "-eval", f"(voice_{voice})",
         "-eval", f"(Parameter.set 'Duration_Stretch {stretch})", "-o", "{out}"],
        stdin=word,
    )  # fmt: skip


def piper(word: str, model: str, length: float, noise: float, noise_w: float,
          python: str = sys.executable) -> np.ndarray:  # fmt: skip
    """Speak ``word`` with a Piper voice (``model``: its ``.onnx`` file) run by ``python``
    (an interpreter where ``piper-tts`` is installed; it is not a dependency of ours)."""
    return _run_to_file(
        [python, "-m", "piper", "-m", model, "--length-scale", str(length),
         "--noise-scale", str(noise), "--noise-w-scale", str(noise_w), "-f", "{out}"],
        stdin=word,
    )  # fmt: skip


def shift_voice(x: np.ndarray, semitones: float) -> np.ndarray:
    """Move pitch and formants together by ``semitones`` (a shorter or longer vocal tract
    and a higher or lower voice), keeping the duration: a new speaker from one voice."""
    import torch
    import torchaudio.functional as AF

    y = AF.pitch_shift(torch.from_numpy(x)[None], SAMPLE_RATE, semitones)[0].numpy()
    return trim_and_normalise(y, SAMPLE_RATE)
