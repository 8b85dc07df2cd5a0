"""A user's media as a prompt: any photo, any clip, brought to what the model takes.

The tokenizers already take any image mode and any sample rate or channel count (image.py:
mode -> RGB, scale into ``[min_size, max_size]``, snap to the factor; audio.py: resample,
mix down). A prompt meets two more limits, the model's own: an image grid no larger than
the vocabulary's ``image_max_grid`` (its grid tokens can say no more) and a prompt that
leaves room in the context (``block_size``). This module applies them in one place for
``native-mm generate``, ``native-mm eval`` and the Python API:

- **Images.** EXIF orientation is applied when the file is opened (image.py). With
  ``image_size`` unset, an image whose grid fits is encoded exactly as the tokenizer's
  policy makes it (as the corpus' images were) and a larger one is shrunk, aspect kept,
  to the largest grid that fits (vocabulary and context). With ``image_size=N`` the image
  is resized keeping its aspect, then ``pad`` (letterboxed into N x N with the colour of
  its border: the whole image stays) or ``crop`` (the centre N x N: the square is
  filled). The digits model was trained on 16 px squares: its prompts use
  ``image_size=16``.
- **Audio.** A clip whose codes would not fit into the context is refused before it is
  decoded, with its duration and the limit in seconds.
- **Paths.** A FIFO, a device, a directory or a broken link is named as such, not as a
  missing file: prompts are read from regular files only (a pipe or a device can block or
  never end).
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from native_mm.constraints import GenerationError, check_number

IMAGE_FITS = ("pad", "crop")


class PromptError(GenerationError):
    """A prompt the model cannot take; the message names the segment and the limit."""


@dataclass(frozen=True)
class PromptMedia:
    """How prompt images are sized (audio needs no option: the tokenizer resamples)."""

    image_size: int | None = None  # px side of the square prompt images become (None: as is)
    image_fit: str = "pad"  # "pad" (letterbox, whole image) | "crop" (centre square)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_number("image_size", self.image_size, 1, integer=True)
        if self.image_fit not in IMAGE_FITS:
            raise PromptError(f"image_fit must be one of {IMAGE_FITS}, got {self.image_fit!r}")


def path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a media file, or None when it is a regular file."""
    p = Path(path)
    try:
        mode = p.stat().st_mode  # follows symbolic links
    except FileNotFoundError:
        return "a broken symbolic link" if p.is_symlink() else "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]  # fmt: skip
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{what}, not a regular file: media prompts are read from files only"


# ---- images --------------------------------------------------------------------------------
def image_limit(tokenizer: Any, max_grid: int) -> int:
    """The longest image side in pixels a prompt may have: the vocabulary's grid limit
    and the tokenizer's ``max_size``, whichever is smaller (a multiple of the factor)."""
    f = tokenizer.factor
    return min(max_grid, tokenizer.config.max_size // f) * f


def _border_colour(img: Any) -> tuple[int, ...]:
    a = np.asarray(img, dtype=np.float32)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(round(v)) for v in edge.mean(axis=0))


def square(img: Any, side: int, fit: str) -> Any:
    """An RGB image resized keeping its aspect, then padded or centre-cropped to ``side``."""
    from PIL import Image

    w, h = img.size
    scale = side / (max(w, h) if fit == "pad" else min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    if fit == "crop":
        left, top = (size[0] - side) // 2, (size[1] - side) // 2
        return img.crop((left, top, left + side, top + side))
    canvas = Image.new("RGB", (side, side), _border_colour(img))
    canvas.paste(img, ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def fit_image(
    img: Any, tokenizer: Any, max_grid: int, media: PromptMedia, where: str,
    room: int | None = None, raster: Any = None,
) -> Any:  # fmt: skip
    """An RGB PIL image -> one the tokenizer encodes into a grid the model can take: sides
    within ``max_grid`` codes and, given ``room`` (tokens left in the context), a span no
    longer than that (its length from the image layout ``raster``, e.g. ``ImageRaster``)."""
    from PIL import Image

    from native_mm.tokenizers.image import target_size

    cfg, f = tokenizer.config, tokenizer.factor
    limit = image_limit(tokenizer, max_grid)
    if limit < cfg.min_size:
        raise PromptError(
            f"{where}: the image tokenizer's min_size={cfg.min_size} px is larger than the "
            f"largest image this vocabulary can express ({max_grid}x{max_grid} codes)"
        )

    def fits(size: tuple[int, int]) -> bool:
        w, h = target_size(*size, cfg)  # what the tokenizer will encode
        return max(w, h) <= limit and (room is None or raster.span_length(h // f, w // f) <= room)

    if media.image_size is not None:
        side = max(f, round(media.image_size / f) * f)
        if not cfg.min_size <= side <= limit:
            raise PromptError(
                f"image_size={media.image_size} px: this model takes prompt images of "
                f"{cfg.min_size}..{limit} px ({cfg.min_size // f}..{limit // f} codes a side)"
            )
        if not fits((side, side)):
            raise PromptError(
                f"{where}: image_size={media.image_size} px is "
                f"{raster.span_length(side // f, side // f)} tokens; "
                f"the model's context has room for {room} here"
            )
        return img if img.size == (side, side) else square(img, side, media.image_fit)
    if fits(img.size):
        return img  # the tokenizer's own policy: how the corpus' images were encoded
    for longest in range(limit, f - 1, -f):  # the largest grid that fits, aspect kept
        scale = longest / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if fits(size):
            return img.resize(size, Image.Resampling.BICUBIC)
    raise PromptError(f"{where}: no image fits the {room} tokens left in the model's context")


# ---- audio ---------------------------------------------------------------------------------
def audio_seconds(value: Any) -> float | None:
    """A clip's duration from its header (a path) or its samples; None if unreadable here
    (the tokenizer then reports the file)."""
    from native_mm.tokenizers.base import Waveform

    if isinstance(value, Waveform):
        n = np.shape(value.samples)[-1] if np.ndim(value.samples) else 0
        return n / value.sample_rate if value.sample_rate and value.sample_rate > 0 else None
    try:
        import soundfile as sf

        info = sf.info(str(value))
    except Exception:  # noqa: BLE001 -- the tokenizer's reader gives the precise error
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def check_audio_fits(seconds: float, tokenizer: Any, frames: Any, room: int, where: str) -> None:
    """Refuse a clip whose span needs more than ``room`` tokens (its length from the audio
    layout ``frames``, e.g. ``AudioFrameMajor``)."""
    rate = tokenizer.frame_rate
    if not rate or not math.isfinite(seconds):
        return
    tokens = frames.span_length(math.ceil(seconds * rate))
    if tokens > room:
        most = max(0.0, (room - frames.span_length(0)) // frames.levels / rate)
        raise PromptError(
            f"{where}: {seconds:.2f} s of audio is {tokens} tokens, but the model's context "
            f"has room for {room} here: at most {most:.2f} s of audio"
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def as_segment(item: Any, k: int) -> Any:
    """One prompt item -> a ``(kind, value)`` segment: a string is text, a PIL image an
    image, a Waveform or ``(samples, sample_rate)`` audio, a path by its suffix; a pair or a
    ``{kind: value}`` dict passes through."""
    from PIL import Image

    from native_mm.tokenizers.base import Waveform

    if isinstance(item, str):
        return ("text", item)
    if isinstance(item, Image.Image):
        return ("image", item)
    if isinstance(item, Waveform):
        return ("audio", item)
    if isinstance(item, Path):
        suffix = item.suffix.lower()
        if suffix in IMAGE_SUFFIXES + AUDIO_SUFFIXES:
            return ("image" if suffix in IMAGE_SUFFIXES else "audio", item)
        raise PromptError(f"prompt item {k} ({item}): not an image or audio file suffix")
    if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], str):
        samples, rate = item
        if hasattr(samples, "detach"):  # a torch tensor
            samples = samples.detach().cpu().numpy()
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim not in (1, 2) or not isinstance(rate, (int, np.integer)) or rate < 1:
            raise PromptError(
                f"prompt item {k}: audio must be (samples (N,) or (C, N), sample_rate in Hz)"
            )
        return ("audio", Waveform(np.atleast_2d(samples), int(rate)))
    return item  # (kind, value) pairs, {kind: value} dicts, Segments: generation reads them


def kind_and_value(seg: Any, k: int) -> tuple[str, Any]:
    """A Segment, a ``(kind, value)`` pair, a ``{kind: value}`` dict or a bare item
    (:func:`~native_mm.prompt_media.as_segment`) -> (kind, value)."""
    seg = as_segment(seg, k)
    if hasattr(seg, "kind") and hasattr(seg, "value"):
        return seg.kind, seg.value
    if isinstance(seg, dict):
        keys = [key for key in ("text", "image", "audio") if key in seg]
        if len(keys) != 1:
            raise PromptError(f"prompt segment {k}: needs exactly one of text/image/audio")
        return keys[0], seg[keys[0]]
    if isinstance(seg, (tuple, list)) and len(seg) == 2:
        return str(seg[0]), seg[1]
    raise PromptError(f"prompt segment {k}: cannot read a {type(seg).__name__} as a segment")


def added_special(vocab: Any, name: Any, k: int) -> int:
    """The id of a prompt's special segment (a chat turn's marker), or a PromptError."""
    if name not in vocab.added:
        raise PromptError(f"prompt segment {k}: the model has no {name!r} token (its added "
                          f"specials: {list(vocab.added)})")  # fmt: skip
    return vocab.special_id(name)
