"""Image tokenizer throughput: encode and decode images/s at the digits size and 256x256.

    python benchmarks/bench_image.py [--threads 1 2] [--out bench_image.json]

Uses the shipped tokenizers (``tokenizers/image/digits`` for 16x16 digits,
``tokenizers/image/photos`` for 256x256 photos) when present, else a fresh model built
from the spec YAML (throughput does not depend on the weights). Encode includes the
preprocessing (RGB conversion, resize policy); decode includes the conversion to PIL.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from native_mm.tokenizers.image import ImageTokenizer
from native_mm.tokenizers.image_train import ImageTrainSpec
from native_mm.tokenizers.trainer import load_spec

REPO = Path(__file__).resolve().parents[1]


def tokenizer(name: str) -> tuple[ImageTokenizer, str]:
    trained = REPO / "tokenizers" / "image" / name
    if (trained / "weights.pt").is_file():
        return ImageTokenizer.load(trained), f"tokenizers/image/{name}"
    spec = load_spec(ImageTrainSpec, REPO / "tokenizers" / "image" / f"{name}.yaml")
    return ImageTokenizer(spec.model), f"tokenizers/image/{name}.yaml (untrained)"


def timed(fn, min_time: float = 3.0) -> float:
    """Seconds per call: one warm-up call, then repeat for at least ``min_time`` seconds."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def bench(tok: ImageTokenizer, images: list[Image.Image]) -> dict:
    codes = tok.encode_batch(images)
    enc = timed(lambda: tok.encode_batch(images))
    dec = timed(lambda: tok.decode_batch(codes))
    one = timed(lambda: tok.encode(images[0]), min_time=1.0)
    return {
        "batch": len(images),
        "grid": list(codes[0].shape),
        "encode_images_per_s": len(images) / enc,
        "decode_images_per_s": len(images) / dec,
        "encode_single_ms": one * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    from native_mm.apps.digits import images as digits

    digit_imgs = [digits.to_pil(x, size=8) for x in digits.load("heldout")[0][:64]]
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    crops = []
    for i in range(8):
        p = photos[i % 2]
        x, y = int(rng.integers(p.width - 256)), int(rng.integers(p.height - 256))
        crops.append(p.crop((x, y, x + 256, y + 256)))
    results = []
    for name, imgs, label in (("digits", digit_imgs, "digits 8x8 -> 16x16"),
                              ("photos", crops, "photo 256x256")):  # fmt: skip
        tok, source = tokenizer(name)
        for threads in args.threads:
            torch.set_num_threads(threads)
            r = {"input": label, "tokenizer": source, "threads": threads, **bench(tok, imgs)}
            results.append(r)
            print(json.dumps(r))
    print(
        "\n| input | tokenizer | threads | batch | grid | encode img/s | decode img/s | 1 img ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['input']} | {r['tokenizer']} | {r['threads']} | {r['batch']} | "
            f"{r['grid'][0]}x{r['grid'][1]} | {r['encode_images_per_s']:.1f} | "
            f"{r['decode_images_per_s']:.1f} | {r['encode_single_ms']:.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
