"""``native-mm generate``: an interleaved prompt from the command line in, one file per
generated segment out (``.txt`` / ``.png`` / ``.wav``), written as each segment finishes.

The library entry points (:func:`~native_mm.generation.generate`, ``stream``) live in
:mod:`native_mm.generation`; this module adds the argument parsing and the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from native_mm.checkpoint import load_checkpoint
from native_mm.constraints import OutputSpec
from native_mm.generation import (
    Generation,
    SamplingConfig,
    audio_frames_for,
    stream,
)
from native_mm.tokenizers.base import Waveform


# ---- CLI ---------------------------------------------------------------------------------
class _Segment(argparse.Action):
    """--text/--image/--audio append to one ordered list of prompt segments."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        segments = getattr(namespace, "segments", None) or []
        segments.append((self.dest, values))
        namespace.segments = segments


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 8x8), got {text!r}") from None
    return h, w


def save_media(stem: str | Path, media: Any) -> Path:
    """Write one decoded output next to ``stem``: ``.txt``, ``.png`` or ``.wav`` by type."""
    import soundfile

    from native_mm.io import atomic_write

    if isinstance(media, str):
        path = Path(f"{stem}.txt")
        with atomic_write(path, "w") as f:
            f.write(media)
    elif isinstance(media, Waveform):
        path = Path(f"{stem}.wav")
        with atomic_write(path, "wb") as f:
            soundfile.write(f, media.samples.T, media.sample_rate, format="WAV")
    else:  # a PIL image
        path = Path(f"{stem}.png")
        with atomic_write(path, "wb") as f:
            media.save(f, format="PNG")
    return path


def save_outputs(generations: list[Generation], out: str | Path) -> list[Path]:
    """Write each sample's outputs as ``sample{i}_{k}.txt / .png / .wav``; return paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        save_media(out / f"sample{i}_{k}", media)
        for i, g in enumerate(generations)
        for k, media in enumerate(g.outputs)
    ]


def main(argv: list[str] | None = None, prog: str = "native-mm generate") -> int:
    """``native-mm generate``: prompt segments in (in command-line order), files out."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("--ckpt", required=True, help="model checkpoint (.ckpt from fit, or plain)")
    p.add_argument("--tokenizers", required=True, help="tokenizer set directory")
    for kind in ("text", "image", "audio"):
        what = "the text" if kind == "text" else f"path of an {kind} file"
        p.add_argument(
            f"--{kind}",
            dest=kind,
            action=_Segment,
            help=f"prompt segment: {what} (repeatable, kept in order)",
        )
    p.add_argument("--output-modality", choices=["text", "image", "audio", "any"], default="any")
    p.add_argument("--image-size", type=_parse_size, help="force the image grid, HxW codes")
    p.add_argument("--max-image-grid", type=int, help="largest grid side the model may pick")
    p.add_argument("--audio-seconds", type=float, help="force the audio duration")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance (image/audio)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--out", required=True, help="directory for the .txt/.png/.wav outputs")
    args = p.parse_args(argv)
    from native_mm.tokenizers.base import TokenizerSet

    tokenizers = TokenizerSet.load(args.tokenizers)
    lm = load_checkpoint(args.ckpt, tokenizers)
    modality = None if args.output_modality == "any" else args.output_modality
    frames = None
    if args.audio_seconds is not None:
        frames = audio_frames_for(args.audio_seconds, tokenizers)
    output = OutputSpec(modality, args.image_size, frames, args.max_image_grid)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        cfg_scale=args.cfg_scale,
    )
    segments = getattr(args, "segments", None) or []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = [0] * args.num_samples
    # Streamed: each output file is written (and printed) as soon as its segment finishes.
    for r, media in stream(
        lm.model, segments, tokenizers, output, sampling, args.num_samples, lm.layout
    ):
        print(save_media(out / f"sample{r}_{count[r]}", media), flush=True)
        count[r] += 1
    return 0
