"""``native-mm generate``: an interleaved prompt from the command line in, one file per
generated segment out (``.txt`` / ``.png`` / ``.wav``), written as each segment finishes.

The library entry points (:func:`~native_mm.generation.generate`, ``stream``) live in
:mod:`native_mm.generation`; this module adds the argument parsing and the files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from native_mm import cli_help
from native_mm.constraints import OutputSpec, number_problem
from native_mm.generation import (
    Generation,
    SamplingConfig,
    audio_frames_for,
    stream,
)
from native_mm.pretrained import DTYPES, load
from native_mm.prompt_media import IMAGE_FITS, PromptMedia
from native_mm.release import find_checkpoint
from native_mm.sampling import MAX_CFG_SCALE, MAX_TEMPERATURE
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
    if min(h, w) < 1:
        raise argparse.ArgumentTypeError(f"grid sides must be >= 1, got {text!r}")
    return h, w


def checked(low: float | None = None, high: float | None = None, integer: bool = False,
            low_open: bool = False) -> Any:  # fmt: skip
    """An argparse ``type``: a finite number in range, else the option's one-line error."""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text}") from None
        problem = number_problem(value, low, high, integer, low_open)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


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


def _settings(args: argparse.Namespace, modality: str | None) -> tuple[dict, int | None, str]:
    """Sampling settings and prompt image side: the flags given, then the model's
    ``generation_config.json``, then the library's defaults -> (settings, size, source)."""
    from native_mm import generation_config

    given = {k: getattr(args, k) for k in generation_config.KEYS if getattr(args, k) is not None}
    path = generation_config.find(args.ckpt)
    model = generation_config.load(path) if path else generation_config.GenerationDefaults()
    settings = model.settings(modality, given)
    size = args.prompt_image_size or model.prompt_image_size
    source = f"flags over {path}" if path else "flags over the library defaults: no " + (
        f"{generation_config.FILE} beside the checkpoint")  # fmt: skip
    return settings, size, source


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, shared by generate and eval."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="cast the model's weights (default: as stored, float32)")  # fmt: skip


MODEL = "(default: the model's generation_config.json, else {})"
# flag, parser type, default (None: from the model), help line
SAMPLING_OPTIONS = [
    ("--max-new-tokens", checked(1, integer=True), 512, "generated tokens per sample at most"),
    ("--temperature", checked(0, MAX_TEMPERATURE), None,
     "softmax temperature, 0 = greedy " + MODEL.format("1.0")),
    ("--top-k", checked(1, integer=True), None,
     "sample from the k most likely tokens only " + MODEL.format("all")),
    ("--top-p", checked(0, 1, low_open=True), None,
     "nucleus: the smallest set of tokens with probability >= p " + MODEL.format("all")),
    ("--seed", checked(0, 2**63 - 1, integer=True), 0, "sampling seed"),
    ("--cfg-scale", checked(0, MAX_CFG_SCALE), None,
     "classifier-free guidance for image/audio outputs, 1 = none " + MODEL.format("none")),
    ("--num-samples", checked(1, 1024, integer=True), 1, "samples drawn for the prompt, one batch"),
]  # fmt: skip


def main(argv: list[str] | None = None, prog: str = "native-mm generate") -> int:
    """``native-mm generate``: prompt segments in (in command-line order), files out."""
    p = cli_help.parser(prog, main.__doc__)
    p.add_argument("--ckpt", required=True, help="a model directory (native-mm export), a "
                   "run directory or a checkpoint (.ckpt from fit, or plain)")  # fmt: skip
    p.add_argument("--tokenizers", help="tokenizer set directory (default: the model's own "
                   "tokenizers/, or the run's)")  # fmt: skip
    add_device_options(p)
    for kind in ("text", "image", "audio"):
        what = "the text" if kind == "text" else f"path of an {kind} file"
        p.add_argument(
            f"--{kind}",
            dest=kind,
            action=_Segment,
            help=f"prompt segment: {what} (repeatable, kept in order)",
        )
    p.add_argument(
        "--output-modality",
        choices=["text", "image", "audio", "any"],
        default="any",
        help="force what is generated (any: the model chooses)",
    )
    p.add_argument(
        "--image-size",
        type=_parse_size,
        help="force the generated image's grid, HxW in codes (not pixels)",
    )
    p.add_argument(
        "--max-image-grid",
        type=checked(1, integer=True),
        help="largest grid side, in codes, the model may pick for an image",
    )
    p.add_argument(
        "--audio-seconds",
        type=checked(0, 3600, low_open=True),
        help="force the generated audio's duration, seconds",
    )
    p.add_argument("--prompt-image-size", type=checked(1, integer=True),
                   help="bring prompt images to this square side, pixels (default: the "
                        "model's generation_config.json, else as the tokenizer takes them, "
                        "shrunk to the largest grid the model takes)")  # fmt: skip
    p.add_argument("--prompt-image-fit", choices=IMAGE_FITS, default="pad",
                   help="with --prompt-image-size: pad (the whole image, letterboxed with "
                        "its border colour) or crop (the centre square)")  # fmt: skip
    for flag, kind, default, text in SAMPLING_OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--out", required=True, help="directory for the .txt/.png/.wav outputs")
    args = p.parse_args(argv)
    args.ckpt = find_checkpoint(args.ckpt)
    lm, tokenizers = load(args.ckpt, args.tokenizers, args.device, args.dtype)
    modality = None if args.output_modality == "any" else args.output_modality
    frames = None
    if args.audio_seconds is not None:
        frames = audio_frames_for(args.audio_seconds, tokenizers)
    output = OutputSpec(modality, args.image_size, frames, args.max_image_grid)
    settings, image_size, source = _settings(args, modality)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, seed=args.seed, **settings)
    used = ", ".join(f"{k}={v}" for k, v in settings.items())
    print(f"{prog}: sampling {used}; prompt images {image_size or 'as the tokenizer takes them'}"
          f" ({source})", file=sys.stderr)  # fmt: skip
    segments = getattr(args, "segments", None) or []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = [0] * args.num_samples
    # Streamed: each output file is written (and printed) as soon as its segment finishes.
    prompt_media = PromptMedia(image_size, args.prompt_image_fit)
    for r, media in stream(
        lm.model, segments, tokenizers, output, sampling, args.num_samples, lm.layout, prompt_media
    ):
        print(save_media(out / f"sample{r}_{count[r]}", media), flush=True)
        count[r] += 1
    return 0
