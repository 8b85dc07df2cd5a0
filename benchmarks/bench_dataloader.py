"""Data loader rate vs training step rate (the loader must be >= 20x faster).

Builds synthetic interleaved shards (text, image and audio spans; with modality and
conditioning dropout on), then measures

* loader: batches/s of ``ShardDataModule.train_dataloader()`` (packing, dropouts,
  memmap reads, collation) with the given ``--workers``;
* training: optimizer steps/s of ``LanguageModule`` on the same batches (forward,
  loss, backward, AdamW) for the model shape given (default: the CPU recipe's).

    nice -n 5 python benchmarks/bench_dataloader.py --threads 2

Prints one JSON line; ``ratio`` = loader batches/s / training steps/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from native_mm.model import ModelConfig
from native_mm.training.data import DropoutConfig, ShardDataModule, SourceSpec
from native_mm.training.module import LanguageModule
from native_mm.training.shards import write_shards_from_ids
from native_mm.vocab import BOA, BOI, BOS, EOA, EOI, EOS, Vocab


def synthetic_docs(vocab: Vocab, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Documents of text with an 8x8 image and a 2-level audio clip, prompts masked."""
    rng = np.random.default_rng(seed)
    r = vocab.ranges
    docs = []
    for _ in range(n):
        text = r["text"].start + rng.integers(0, vocab.text_size, rng.integers(10, 80))
        img = r["image"].start + rng.integers(0, vocab.image_codes, 64)
        grid = [r["image_grid"].start + 7] * 2
        aud = r["audio0"].start + rng.integers(0, 2 * vocab.audio_codes, 40)
        ids = np.concatenate([[BOS], text, [BOI], grid, img, [EOI], text[:8], [BOA], aud,
                              [EOA, EOS]]).astype(np.int64)  # fmt: skip
        loss = np.ones(len(ids), bool)
        loss[: 1 + len(text)] = False  # the prompt
        docs.append((ids, loss))
    return docs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=4000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--batches", type=int, default=200, help="loader batches timed")
    p.add_argument("--steps", type=int, default=10, help="training steps timed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vocab = Vocab(text_size=4000, image_codes=1024, audio_codes=256, audio_levels=2)
    with tempfile.TemporaryDirectory() as tmp:
        write_shards_from_ids(Path(tmp), synthetic_docs(vocab, args.docs), vocab, 1000)
        dm = ShardDataModule(
            [SourceSpec(tmp)], seq_len=args.seq, batch_size=args.batch, num_workers=args.workers,
            dropout=DropoutConfig(image_dropout=0.1, audio_dropout=0.1, cond_dropout=0.1),
        )  # fmt: skip
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        batches = [next(it) for _ in range(5)]  # worker start-up is not timed
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        loader_rate = args.batches / (time.perf_counter() - t0)
        del it
        cfg = ModelConfig(block_size=args.seq, n_layer=args.layers, n_embd=args.d_model,
                          n_head=args.heads)  # fmt: skip
        module = LanguageModule(arch=cfg, vocab_manifest=dm.vocab_manifest)
        module.configure_model()
        module.log = module.log_dict = lambda *a, **k: None
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        times = []
        for s in range(args.steps + 2):
            t0 = time.perf_counter()
            loss = module.compute_loss(batches[s % len(batches)], "train")
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        step_rate = 1 / float(np.median(times[2:]))
    print(json.dumps({
        "loader_batches_per_s": round(loader_rate, 1),
        "train_steps_per_s": round(step_rate, 2),
        "ratio": round(loader_rate / step_rate, 1),
        "workers": args.workers, "seq": args.seq, "batch": args.batch,
        "model": {"layers": args.layers, "d_model": args.d_model, "vocab": vocab.size},
        "threads": args.threads,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
