"""Text tokenizer and document validator: speed, compression and exactness numbers.

    nice -n 5 python benchmarks/text_tokenizer.py [--mb 4] [--random 20000] [--docs 100000]

Prints a markdown table (copied into BENCHMARKS.md). Timings are wall clock on whatever
the machine is doing at the time; compare runs made side by side only.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from native_mm.documents import SkipReport, read_documents
from native_mm.tokenizers.text import TextSpec, iter_spec_texts, train_text_tokenizer
from native_mm.tokenizers.trainer import load_spec

ROOT = Path(__file__).resolve().parents[1]


def random_text(rng: random.Random, n: int) -> str:
    """Random valid Unicode: mostly ASCII words, some CJK/emoji/controls/'▁'."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.7:
            out.append(rng.choice(["the", "digit", "seven", " ", "  ", "\n", "7", "a"]))
        elif r < 0.9:
            out.append(chr(rng.randrange(0x20, 0xD7FF)))
        else:
            out.append(rng.choice(["\x00", "\r\n", "\u2581", "😀", "数字", "\t"]))
    return "".join(out)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=4.0, help="MB of text for throughput")
    parser.add_argument("--random", type=int, default=20000, help="random strings checked")
    parser.add_argument("--docs", type=int, default=100000, help="JSONL lines validated")
    args = parser.parse_args()
    rows = []

    for name in ("default", "digits"):
        spec_path = ROOT / "tokenizers" / "text" / f"{name}.yaml"
        spec = load_spec(TextSpec, spec_path)
        files = [f for pat in spec.inputs for f in sorted((spec_path.parent).glob(pat))]
        tok, secs = timed(train_text_tokenizer, spec, list(iter_spec_texts(spec, files)))
        rows.append((f"train `{name}.yaml` ({tok.codebook_size} pieces)", f"{secs:.2f} s"))
        if name == "digits":
            from native_mm.apps.digits.sources import digit_sentences

            caps = list(digit_sentences())
            n_bytes = sum(len(c.encode()) for c in caps)
            n_tok = sum(len(tok.encode(c)) for c in caps)
            rows.append(
                ("digits spec: UTF-8 bytes per token on digit phrases", f"{n_bytes / n_tok:.2f}")
            )
            continue
        sample = (ROOT / "tokenizers/text/corpus/sample.txt").read_text(encoding="utf-8")
        text = sample * max(1, int(args.mb * 1e6 / len(sample.encode())))
        mb = len(text.encode()) / 1e6
        ids, enc_s = timed(tok.encode, text)
        out, dec_s = timed(tok.decode, ids)
        assert out == text
        sp = spm.SentencePieceProcessor(model_proto=tok._proto)
        _, sp_dec_s = timed(sp.decode, ids.tolist())
        rows.append(
            ("default: UTF-8 bytes per token on sample.txt", f"{len(text.encode()) / len(ids):.2f}")
        )
        rows.append((f"default: encode {mb:.1f} MB", f"{mb / enc_s:.1f} MB/s"))
        rows.append((f"default: decode {mb:.1f} MB (ours, exact)", f"{mb / dec_s:.1f} MB/s"))
        rows.append(
            (f"default: decode {mb:.1f} MB (sentencepiece, not exact)", f"{mb / sp_dec_s:.1f} MB/s")
        )
        rng = random.Random(0)
        strings = [random_text(rng, rng.randrange(0, 60)) for _ in range(args.random)]
        t = time.perf_counter()
        exact = sum(tok.decode(tok.encode(s)) == s for s in strings)
        secs = time.perf_counter() - t
        sp_exact = sum(sp.decode(sp.encode(s)) == s for s in strings)
        rows.append(
            (
                f"default: exact round trips, {args.random} random strings (ours)",
                f"{exact}/{args.random} ({args.random / secs:.0f} strings/s)",
            )
        )
        rows.append(
            ("same strings through plain sentencepiece encode/decode", f"{sp_exact}/{args.random}")
        )

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "a.png").write_bytes(b"x")
        rng = random.Random(0)
        with open(root / "docs.jsonl", "w") as f:
            for i in range(args.docs):
                if rng.random() < 0.01:
                    f.write('{"id": broken\n')
                    continue
                rec = {
                    "id": f"d{i}",
                    "segments": [{"text": f"the digit {i % 10}"}, {"image": "a.png"}],
                }
                f.write(json.dumps(rec) + "\n")
        report = SkipReport()
        _, secs = timed(
            lambda: sum(
                1 for _ in read_documents(root / "docs.jsonl", on_error="skip", report=report)
            )
        )
        rows.append(
            (
                f"validate {args.docs} JSONL lines (1% malformed)",
                f"{args.docs / secs:.0f} lines/s, skipped {report.skipped}",
            )
        )

    print("| measurement | value |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
