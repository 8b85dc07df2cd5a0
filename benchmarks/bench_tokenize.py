"""``tokenize`` throughput on real media (issue 18): documents/s and tokens/s per core.

Two workloads, each with 1 and 2 encoding processes (one thread each):

* image-caption pairs: 256x256 crops of scikit-learn's sample photographs with captions,
  coded by the shipped photos VQ-GAN (``tokenizers/image/photos``, factor 4: 64x64 = 4,096
  codes);
* speech-transcript pairs: espeak-ng sentences (about 2-3 s) coded at 24 kHz by EnCodec's
  24 kHz architecture at 6 kbps (8 levels; random weights from encodec's own constructor:
  no pretrained weights can be downloaded here, and the timing does not depend on them).

Then what that means for 100 million pairs on N machines of C cores, from the per-core rate
(tokenize parts scale by processes: ``--part K/N`` or ``--dask``; README "Tokenizing at
scale")::

    python benchmarks/bench_tokenize.py --pairs 300 --clips 120 --out benchmarks/logs/tokenize.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from native_mm.tokenizers.audio import AudioTokenizer
from native_mm.tokenizers.base import TokenizerSet
from native_mm.tokenizers.image import ImageTokenizer
from native_mm.tokenizers.text import TextSpec, train_text_tokenizer
from native_mm.training.shards import tokenize

ROOT = Path(__file__).resolve().parents[1]
PLACES = {"china.jpg": "a temple roof in china", "flower.jpg": "a pink flower"}
SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the shore",
             "a photo of a temple in the morning", "seven small birds sit on a wire",
             "please read the number four hundred and two"]  # fmt: skip


def photo_pairs(root: Path, n: int) -> Path:
    from sklearn.datasets import load_sample_image

    rng, lines = np.random.default_rng(0), []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = list(PLACES)[i % 2]
        img = load_sample_image(name)
        y, x = rng.integers(0, img.shape[0] - 256), rng.integers(0, img.shape[1] - 256)
        Image.fromarray(img[y : y + 256, x : x + 256]).save(root / f"img/{i}.png")
        segs = [{"text": f"{PLACES[name]}, crop {i}"}, {"image": f"img/{i}.png"}]
        lines.append(json.dumps({"id": f"p{i}", "segments": segs if i % 2 else segs[::-1]}))
    (root / "photos.jsonl").write_text("\n".join(lines) + "\n")
    return root / "photos.jsonl"


def speech_pairs(root: Path, n: int) -> Path:
    lines = []
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        cmd = ["espeak-ng", "-v", "en-us", "-s", str(140 + 5 * (i % 8)), "--stdout", text]
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout
        x, sr = sf.read(io.BytesIO(raw), dtype="float32")
        sf.write(root / f"wav/{i}.wav", x, sr)
        segs = [{"audio": f"wav/{i}.wav"}, {"text": text}]
        lines.append(json.dumps({"id": f"s{i}", "segments": segs if i % 2 else segs[::-1]}))
    (root / "speech.jsonl").write_text("\n".join(lines) + "\n")
    return root / "speech.jsonl"


def tokenizer_set(root: Path) -> Path:
    from encodec import EncodecModel

    from native_mm.io import sha256_file

    text = train_text_tokenizer(TextSpec(vocab_size=400, character_coverage=1.0),
                                list(PLACES.values()) + SENTENCES * 20)  # fmt: skip
    torch.manual_seed(0)
    raw = root / "raw.th"
    torch.save(EncodecModel.encodec_model_24khz(pretrained=False).state_dict(), raw)
    weights = raw.rename(root / f"encodec_24khz-{sha256_file(raw)[:8]}.th")
    audio = AudioTokenizer.from_pretrained("encodec_24khz", weights, levels=8)
    image = ImageTokenizer.load(ROOT / "tokenizers/image/photos")
    TokenizerSet(text, image, audio, image_max_grid=64).save(root / "set")  # 256 px / factor 4
    return root / "set"


def measure(docs: Path, toks: Path, out: Path, workers: int) -> dict:
    t = time.perf_counter()
    m = tokenize([docs], out, toks, docs_per_shard=16, workers=workers, log=lambda s: None)
    dt = time.perf_counter() - t
    if not m["documents"]:
        raise SystemExit(f"{docs}: every document was skipped; see {out / 'skipped.json'}")
    cores = max(1, workers)
    return {
        "workers": workers, "seconds": round(dt, 2), "documents": m["documents"],
        "tokens": m["tokens"], "docs_per_s": round(m["documents"] / dt, 2),
        "tokens_per_s": round(m["tokens"] / dt), "docs_per_s_per_core":
        round(m["documents"] / dt / cores, 2), "modality_tokens": m["modality_tokens"],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=300, help="image-caption pairs")
    p.add_argument("--clips", type=int, default=120, help="speech-transcript pairs")
    p.add_argument("--workers", default="1,2", help="encoding processes to compare")
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args()
    results: dict = {"rows": []}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        toks = tokenizer_set(root)
        data = {"image-caption 256x256": photo_pairs(root / "p", args.pairs),
                "speech 24 kHz": speech_pairs(root / "s", args.clips)}  # fmt: skip
        for name, docs in data.items():
            for w in map(int, args.workers.split(",")):
                row = {"workload": name, **measure(docs, toks, root / f"out_{name[:5]}_{w}", w)}
                print(json.dumps(row), flush=True)
                results["rows"].append(row)
    for row in results["rows"]:  # 100M pairs on N machines of 32 cores at this per-core rate
        per_machine = row["docs_per_s_per_core"] * 32
        row["hours_100M_pairs_on"] = {
            n: round(1e8 / (per_machine * n) / 3600, 1) for n in (1, 10, 100)
        }
    print(json.dumps(results["rows"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
