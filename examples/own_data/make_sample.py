"""Make the tutorial's sample (README, "Train on your own data"): real data the project may
ship, laid out as people's own data usually is.

* ``photos/``: 24 crops (64x64) of scikit-learn's two sample photographs, each ``KEY.png``
  beside ``KEY.txt`` holding its caption;
* ``speech/``: 16 spoken phrases by espeak-ng (8 kHz FLAC), each ``KEY.flac`` beside
  ``KEY.txt`` holding its transcript.

    python examples/own_data/make_sample.py     # rewrites photos/ and speech/ here
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly
from sklearn.datasets import load_sample_image

HERE = Path(__file__).resolve().parent
PHOTOS = {"china.jpg": "a temple roof", "flower.jpg": "a pink flower"}
WHERE = ["top left", "top right", "in the middle", "bottom left", "bottom right", "near the edge"]
PHRASES = ["a pink flower", "a temple roof", "the flower in the sun", "an old temple",
           "a photo of a flower", "a photo of a temple", "red petals", "a grey roof"]  # fmt: skip
VOICES = ["en-us", "en-gb"]


def photos(n_per_photo: int = 12, side: int = 64) -> None:
    rng = np.random.default_rng(0)
    out = HERE / "photos"
    out.mkdir(exist_ok=True)
    for name, what in PHOTOS.items():
        img = Image.fromarray(load_sample_image(name))
        for i in range(n_per_photo):
            crop = int(rng.integers(96, 256))
            x = int(rng.integers(0, img.width - crop))
            y = int(rng.integers(0, img.height - crop))
            key = f"{Path(name).stem}_{i:02d}"
            img.crop((x, y, x + crop, y + crop)).resize((side, side), Image.LANCZOS).save(
                out / f"{key}.png", optimize=True
            )
            (out / f"{key}.txt").write_text(f"{what}, {WHERE[i % len(WHERE)]}\n")


def speech(sample_rate: int = 8000) -> None:
    out = HERE / "speech"
    out.mkdir(exist_ok=True)
    k = 0
    for voice in VOICES:
        for text in PHRASES:
            cmd = ["espeak-ng", "-v", voice, "-s", "150", "--stdout", text]
            x, sr = sf.read(io.BytesIO(subprocess.run(cmd, capture_output=True, check=True).stdout))
            x = resample_poly(x, sample_rate, sr)
            sf.write(
                out / f"clip_{k:02d}.flac", x.astype(np.float32), sample_rate, subtype="PCM_16"
            )
            (out / f"clip_{k:02d}.txt").write_text(text + "\n")
            k += 1


if __name__ == "__main__":
    photos()
    speech()
