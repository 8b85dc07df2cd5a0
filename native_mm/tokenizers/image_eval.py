"""``native-mm tokenizer eval image``: reconstruction metrics of an image tokenizer on a
source's held-out split, a folder, a documents JSONL or the sample photos."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from native_mm import cli_help, sources
from native_mm.io import save_image, write_json
from native_mm.tokenizers.base import MediaError
from native_mm.tokenizers.image import ImageTokenizer, open_image, tensor_to_pil
from native_mm.tokenizers.image_metrics import codebook_stats, psnr, ssim
from native_mm.tokenizers.image_train import image_paths, make_grid, photo_images


def evaluate(tok: ImageTokenizer, data: sources.LabeledMedia) -> dict:
    """Reconstruction metrics of ``tok`` over images (paths or PIL).

    PSNR/SSIM compare the decoded image with the tokenizer's own preprocessed input
    (same size); labelled data with a judge also reports the judge's accuracy on the
    originals and on the reconstructions (PIL images).
    """
    media = data.items
    psnrs, ssims, codes, recons = [], [], [], []
    t0 = time.perf_counter()
    xs = [tok.prepare(m) for m in media]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    order = [i for idx in by_shape.values() for i in idx]
    bs = tok.config.batch_size
    for idx in by_shape.values():  # same-size images share a forward pass
        for s in range(0, len(idx), bs):
            x = torch.stack([xs[i] for i in idx[s : s + bs]])
            c = tok.encode_tensor(x)
            rec = tok.decode_tensor(c)
            psnrs += psnr(x, rec).tolist()
            ssims += ssim(x, rec).tolist()
            codes += list(c)
            recons += list(rec)
    # back to the input order (the judge pairs reconstructions with labels)
    recons = [r for _, r in sorted(zip(order, recons, strict=True), key=lambda t: t[0])]
    out: dict[str, Any] = {
        "n_images": len(media),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "tokens_per_image": float(np.mean([c.size for c in codes])),
        "codebook_size": tok.codebook_size,
        **codebook_stats(codes, tok.codebook_size),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if data.labels is not None and data.judge is not None:
        originals = [m if isinstance(m, Image.Image) else open_image(m) for m in media]
        acc_o = data.judge(originals, data.labels)
        acc_r = data.judge([tensor_to_pil(r) for r in recons], data.labels)
        out.update(
            judge_accuracy_original=acc_o,
            judge_accuracy_reconstructed=acc_r,
            accuracy_retention=acc_r / acc_o,
        )
    return out


def eval_main(argv: list[str] | None = None, prog: str = "native-mm tokenizer eval image") -> int:
    """Reconstruction metrics (PSNR, SSIM, codebook usage, perplexity) as JSON."""
    ap = cli_help.parser(prog, eval_main.__doc__)
    ap.add_argument("--tokenizer", required=True, help="directory written by `train image`")
    ap.add_argument(
        "--data", required=True,
        help="a 'module:function' source (its held-out split, judged when it has labels; "
        "e.g. native_mm.apps.digits.sources:digit_images), 'photos', an image folder or a .jsonl",
    )  # fmt: skip
    ap.add_argument("--out", required=True, help="metrics JSON path")
    ap.add_argument("--limit", type=int, default=0, help="evaluate at most this many images")
    ap.add_argument("--grid", default="", help="also write a reconstructions PNG here")
    args = ap.parse_args(argv)
    tok = ImageTokenizer.load(args.tokenizer)
    if sources.is_ref(args.data):
        data = sources.load(args.data, "heldout")
    elif args.data == "photos":
        data = sources.LabeledMedia(photo_images())
    else:
        data = sources.LabeledMedia([str(p) for p in image_paths(args.data)])
    data = data.head(args.limit)
    media = data.items
    if not media:
        raise MediaError(f"{args.data}: no images to evaluate")
    metrics = {"tokenizer": str(args.tokenizer), "data": args.data, **evaluate(tok, data)}
    write_json(args.out, metrics)
    if args.grid:
        xs = [tok.prepare(m) for m in media[:16]]
        if len({tuple(x.shape) for x in xs}) == 1:
            x = torch.stack(xs)
            save_image(args.grid, make_grid(x, tok.decode_tensor(tok.encode_tensor(x))))
    print(json.dumps(metrics, indent=2))
    return 0
