"""Encode/decode real-time factor of the audio tokenizers on this CPU.

RTF = processing seconds / audio seconds (below 1 = faster than real time). Measured for
the 24 kHz EnCodec architecture (random weights: timing does not depend on them) at 6 kbps
(8 levels) and for the trained small tokenizer (tokenizers/audio/speech8k).

    nice -n 5 /tmp/venv/bin/python benchmarks/bench_audio.py --seconds 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
from native_mm.tokenizers.base import Waveform

ROOT = Path(__file__).resolve().parents[1]


def rtf(tok: AudioTokenizer, seconds: float, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    n = int(seconds * tok.sample_rate)
    wav = Waveform((0.1 * rng.standard_normal((tok.config.channels, n))).astype(np.float32),
                   tok.sample_rate)  # fmt: skip
    tok.encode(wav)  # warm-up
    enc, dec = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        codes = tok.encode(wav)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        tok.decode(codes)
        dec.append(time.perf_counter() - t)
    return {
        "audio_seconds": seconds,
        "levels": int(codes.shape[0]),
        "frames": int(codes.shape[1]),
        "params": sum(p.numel() for p in tok.model.parameters()),
        "encode_rtf": min(enc) / seconds,
        "decode_rtf": min(dec) / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trained", default=str(ROOT / "tokenizers/audio/speech8k"))
    ap.add_argument("--out", default="", help="optional JSON output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {"threads": args.threads}
    res["encodec_24khz_random_6kbps"] = rtf(
        AudioTokenizer(AudioConfig(levels=8, name="encodec_24khz")), args.seconds, args.repeats
    )
    if (Path(args.trained) / "config.json").is_file():
        res["trained_" + Path(args.trained).name] = rtf(
            AudioTokenizer.load(args.trained), args.seconds, args.repeats
        )
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
