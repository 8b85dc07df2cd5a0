"""Sampling settings of the main job's media directions, chosen without held-out media.

Guidance scale, temperature and top-k are swept on the text-prompted directions
(text->image, text->audio; their prompts are the training wordings) and, with
``--directions``, on media-prompted ones, whose prompts come from ``--split train`` (the
training writers and voices) by default: the choice never looks at a held-out writer or
voice. The sampling seed differs from ``native-mm eval``'s (seed 0). The winners go into
``recipes/digits.yaml``'s ``eval:`` section.

    python benchmarks/sweep_sampling.py --ckpt runs/digits/lm/checkpoints/last.ckpt \
        --tokenizers runs/digits/tokenizers/set --cfg 1 2 3 4 --temperature 0.5 0.8 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch

from native_mm.apps.digits import evaluation as ev
from native_mm.checkpoint import load_checkpoint
from native_mm.layouts import AudioFrameMajor
from native_mm.tokenizers.base import TokenizerSet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokenizers", required=True)
    p.add_argument("--directions", nargs="+", default=["text->image", "text->audio"])
    p.add_argument("--cfg", nargs="+", type=float, default=[1.0, 2.0, 3.0, 4.0])
    p.add_argument("--temperature", nargs="+", type=float, default=[0.8])
    p.add_argument("--top-k", nargs="+", type=int, default=[0], help="0 = all")
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--audio-levels", type=int, default=None,
                   help="RVQ levels per frame (default: the checkpoint's layout; checkpoints "
                        "older than 093b12b do not record it: pass the recipe's 1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="train", help="media prompts of this split (train = dev)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tokenizers = TokenizerSet.load(a.tokenizers)
    lm = load_checkpoint(a.ckpt, tokenizers)
    layout = lm.layout
    if a.audio_levels is not None:
        layout = dataclasses.replace(layout, audio=AudioFrameMajor(a.audio_levels))
    judges = ev.Judges()
    base = ev.EvalConfig(max_items=a.items, seed=a.seed)
    items = ev.build_items(base, split=a.split)
    rows = []
    print("| direction | cfg | temperature | top_k | accuracy | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for d in a.directions:
        for cfg, temp, k in itertools.product(a.cfg, a.temperature, a.top_k):
            c = ev.EvalConfig(**{**vars(base), "cfg_scale": None if cfg == 1 else cfg,
                                 "temperature_media": temp, "top_k": k or None})  # fmt: skip
            gen = ev.model_generator(lm.model, tokenizers, c, layout)
            r = ev.evaluate(gen, {d: items[d]}, judges, cfg=c, progress=False)["directions"][d]
            row = {"direction": d, "cfg": cfg, "temperature": temp, "top_k": k,
                   "accuracy": r["accuracy"], "seconds": r["seconds"]}  # fmt: skip
            rows.append(row)
            print(f"| {d} | {cfg} | {temp} | {k or 'all'} | {100 * r['accuracy']:.1f}% "
                  f"| {r['seconds']} |", flush=True)  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
