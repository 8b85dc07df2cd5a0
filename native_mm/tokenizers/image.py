"""Image tokenizer: a small VQ-GAN (convolutional encoder/decoder + vqp quantizer).

Adapted in spirit from taming-transformers (Esser et al., 2021: ResNet encoder/decoder,
PatchGAN) and LlamaGen's VQ tokenizer; the quantizer comes from vector-quantize-pytorch
(``VectorQuantize`` with k-means init, EMA and dead-code replacement, or ``FSQ``/``LFQ``).

Shapes: B batch, C channels, H x W pixels, h x w = H/f x W/f code grid, D latent dim,
N = h * w codes, K codebook size.

Preprocessing policy (:meth:`ImageTokenizer.prepare`), applied to every image before
encoding, documented here once:

1. **Orientation, then mode -> RGB.** The EXIF orientation tag is applied (a phone's
   photo stands up). ``RGB`` as is; ``L``/``1``/``CMYK``/``YCbCr``/``LAB``/``HSV`` and
   palette images without transparency through PIL's ``convert("RGB")``; images with
   alpha (``RGBA``, ``LA``, ``PA``, palette with a transparency key) are composited over
   white; 16-bit/32-bit (``I;16*``, ``I``) are scaled by 1/257 when their maximum exceeds
   255, else taken as 8-bit; float ``F`` images are taken as [0, 1] if their maximum is
   <= 1, else as [0, 255]. Anything else PIL cannot convert is a :class:`MediaError`.
2. **Scale.** If the longest side exceeds ``max_size`` the image is shrunk (aspect ratio
   kept) so that it equals ``max_size``; if it is below ``min_size`` the image is enlarged
   so that it equals ``min_size``; otherwise the scale is 1.
3. **Snap.** Each side is rounded to the nearest multiple of the factor ``f`` (at least
   ``f``) by resizing, which changes the aspect ratio by at most ``f/2`` pixels per side.
   The code grid is ``(H/f, W/f)`` and :meth:`ImageTokenizer.decode` returns an image of
   exactly ``(W, H)``; the original size is not stored in the codes.

Files larger than ``max_pixels`` (decoded size read from the header, before decoding
the pixels) are refused as decompression bombs. Use :meth:`ImageTokenizer.encode_anyres`
for large images: tiles at native resolution plus a down-scaled global view.

Normalisation: ``norm: group`` (GroupNorm, the taming default) pools statistics over the
whole image, so a model trained on small crops codes large images worse; ``norm: layer``
(per-pixel channel LayerNorm) makes a region's codes independent of the image around it
beyond the receptive field. Prefer ``layer`` when training and inference sizes differ.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from native_mm.tokenizers.base import MediaError, TorchTokenizer
from native_mm.tokenizers.vqgan import VQGAN, ImageConfig

ImageLike = str | Path | Image.Image


# ---------------------------------------------------------------- image IO and policy

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: width x height of a file


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file; any failure is a MediaError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaError(f"{path}: cannot read image file ({e.strerror or e})") from None
    if size == 0:
        raise MediaError(f"{path}: empty (zero-byte) image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise MediaError(
                        f"{path}: {w}x{h} image exceeds max_pixels={max_pixels} "
                        "(decompression-bomb guard)"
                    )
                img.load()  # decode now so truncated data fails here, not later
                return upright(img)
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(f"{path}: decompression bomb refused ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{path}: corrupt or truncated image ({e})") from None


def upright(img: Image.Image) -> Image.Image:
    """A copy turned as its EXIF orientation says (a phone photo stands up); an image
    without one, or with EXIF data PIL cannot parse, is copied as it is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 -- malformed EXIF must not lose a readable image
        return img.copy()


def to_rgb(img: Image.Image, where: str = "<image>") -> Image.Image:
    """Any PIL mode -> RGB following step 1 of the module's policy."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        elif arr.size and arr.max() > 255:
            arr = arr / 257.0  # 16-bit full range -> 8-bit
        gray = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), mode="L")
        return gray.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise MediaError(f"{where}: cannot convert mode {mode!r} to RGB ({e})") from None


def target_size(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """(W, H) after steps 2-3 of the policy: scale into [min_size, max_size], snap to f."""
    longest = max(width, height)
    scale = 1.0
    if longest > cfg.max_size:
        scale = cfg.max_size / longest
    elif longest < cfg.min_size:
        scale = cfg.min_size / longest
    f = cfg.factor

    def snap(v: float) -> int:
        return max(f, int(round(v / f)) * f)

    return snap(width * scale), snap(height * scale)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(rearrange(arr, "h w c -> c h w").copy())


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] (clamped) -> RGB PIL."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(rearrange(arr, "c h w -> h w c").cpu().numpy(), mode="RGB")


@dataclasses.dataclass
class AnyResCodes:
    """AnyRes encoding: a global view plus native-resolution tiles, each an image span.

    ``tiles`` are in raster order over a ``rows x cols`` layout; :meth:`spans` lists the
    global view first, then the tiles, each an ``(h, w)`` code grid.
    """

    global_view: np.ndarray
    tiles: list[np.ndarray]
    rows: int
    cols: int

    def spans(self) -> list[np.ndarray]:
        return [self.global_view, *self.tiles]


# ---------------------------------------------------------------- the tokenizer


class ImageTokenizer(TorchTokenizer):
    """Images <-> ``(h, w)`` int64 code grids in ``[0, codebook_size)``."""

    modality: ClassVar[str] = "image"
    config_class: ClassVar[type] = ImageConfig

    def __init__(self, config: ImageConfig | None = None) -> None:
        super().__init__(config or ImageConfig())
        if self.config.arch == "llamagen":
            from native_mm.tokenizers.llamagen import LlamaGenVQ

            self.model = LlamaGenVQ(self.config)
        else:
            self.model = VQGAN(self.config)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, layout: str, path: str | Path, max_size: int = 256) -> ImageTokenizer:
        """A published VQ checkpoint from a local file; ``layout``: "llamagen" (LlamaGen's
        ``vq_ds8_c2i.pt`` / ``vq_ds16_c2i.pt``: ``{"model": state_dict}`` or the state dict).
        Sizes are read from the weights; images are shrunk to ``max_size`` px.

        Raises:
            MediaError: unknown layout, missing or unreadable file, weights of another layout.
        """
        from native_mm.io import load_torch
        from native_mm.tokenizers.llamagen import config_from_state_dict

        if layout != "llamagen":
            raise MediaError(f"unknown pretrained image VQ layout {layout!r}; have ['llamagen']")
        path = Path(path)
        if not path.is_file():
            raise MediaError(f"{path}: pretrained {layout} VQ checkpoint not found")
        try:
            sd = load_torch(path)
        except Exception as e:  # noqa: BLE001 -- any unreadable file is the same error to the user
            raise MediaError(f"{path}: cannot read the checkpoint ({e})") from None
        sd = sd.get("model", sd) if isinstance(sd, dict) else sd
        if not isinstance(sd, dict) or "quantize.embedding.weight" not in sd:
            raise MediaError(f"{path}: not a {layout} VQ state dict (no quantize.embedding.weight)")
        sd = {k: v for k, v in sd.items() if k != "quantize.codebook_used"}  # training stat
        try:
            cfg = config_from_state_dict(sd, max_size=max_size)
            tok = cls(cfg)
            tok.model.load_state_dict(sd)
        except (KeyError, ValueError, RuntimeError) as e:
            why = " ".join(str(e).split())  # torch's message spans lines
            raise MediaError(f"{path}: weights do not fit the {layout} layout ({why})") from None
        return tok

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def factor(self) -> int:
        return self.config.factor

    @torch.no_grad()
    def code_vectors(self) -> np.ndarray:
        """``(1, K, z_channels)``: each code's latent as the decoder receives it."""
        ids = torch.arange(self.codebook_size)[None]  # (1, K)
        return self.model.quantizer.decode_indices(ids).float().numpy()

    # -- preprocessing

    def load_rgb(self, media: ImageLike) -> Image.Image:
        """A path or PIL image -> RGB PIL image (policy step 1), errors name the file."""
        if isinstance(media, Image.Image):
            return to_rgb(upright(media))
        if isinstance(media, (str, Path)):
            return to_rgb(open_image(media, self.config.max_pixels), where=str(media))
        raise MediaError(f"cannot encode a {type(media).__name__} as an image")

    def prepare(self, media: ImageLike) -> torch.Tensor:
        """A path or PIL image -> (3, H, W) in [-1, 1], H and W multiples of the factor."""
        img = self.load_rgb(media)
        size = target_size(*img.size, self.config)
        if size != img.size:
            img = img.resize(size, _RESAMPLE[self.config.resample])
        return pil_to_tensor(img)

    # -- encode / decode

    @torch.inference_mode()
    def encode_tensor(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [-1, 1] -> (B, h, w) int64 codes."""
        was_training = self.model.training
        self.model.eval()
        try:
            ids = self.model.encode(x.float()).indices
        finally:
            self.model.train(was_training)
        h, w = x.shape[-2] // self.factor, x.shape[-1] // self.factor
        return rearrange(ids, "b (h w) -> b h w", h=h, w=w).cpu().numpy().astype(np.int64)

    def encode(self, media: ImageLike) -> np.ndarray:
        """One image (path or PIL) -> ``(h, w)`` int64 codes."""
        return self.encode_tensor(self.prepare(media)[None])[0]

    def encode_batch(self, media: Sequence[ImageLike]) -> list[np.ndarray]:
        """Many images of any sizes -> list of ``(h, w)`` codes (same-size images batched)."""
        tensors = [self.prepare(m) for m in media]
        stack_encode = lambda ts: self.encode_tensor(torch.stack(ts))
        return _map_by_shape(tensors, self.config.batch_size, stack_encode)

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.size == 0:
            raise ValueError(f"image codes must be a non-empty (h, w) grid, got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"image codes must be integers, got {codes.dtype}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(
                f"image codes must lie in [0, {self.codebook_size}), "
                f"got [{codes.min()}, {codes.max()}]"
            )
        return codes.astype(np.int64)

    @torch.inference_mode()
    def decode_tensor(self, codes: np.ndarray) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, h*f, w*f) in [-1, 1]."""
        was_training = self.model.training
        self.model.eval()
        try:
            x = self.model.decode_codes(torch.from_numpy(np.asarray(codes, np.int64)))
        finally:
            self.model.train(was_training)
        return x.clamp(-1, 1)

    def decode(self, codes: np.ndarray) -> Image.Image:
        """``(h, w)`` codes -> RGB PIL image of size ``(w*f, h*f)``."""
        return tensor_to_pil(self.decode_tensor(self._check_codes(codes)[None])[0])

    def decode_batch(self, codes: Sequence[np.ndarray]) -> list[Image.Image]:
        """Many ``(h, w)`` code grids (any shapes) -> RGB PIL images."""
        grids = [self._check_codes(c) for c in codes]
        stack_decode = lambda gs: [tensor_to_pil(x) for x in self.decode_tensor(np.stack(gs))]
        return _map_by_shape(grids, self.config.batch_size, stack_decode)

    # -- AnyRes

    def encode_anyres(self, media: ImageLike, tile: int | None = None) -> AnyResCodes:
        """A large image -> global view (policy-resized) + native-resolution tiles.

        Args:
            media: path or PIL image.
            tile: tile side in pixels (default ``max_size``); edge tiles are smaller and,
                like every tile, snapped to a multiple of the factor.
        """
        img = self.load_rgb(media)
        tile = tile or self.config.max_size
        if tile % self.factor:
            raise ValueError(f"tile {tile} must be a multiple of the factor {self.factor}")
        w, h = img.size
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        crops = []
        for r in range(rows):
            for c in range(cols):
                box = (c * tile, r * tile, min(w, (c + 1) * tile), min(h, (r + 1) * tile))
                crop = img.crop(box)
                f = self.factor
                snapped = (max(f, round(crop.width / f) * f), max(f, round(crop.height / f) * f))
                if snapped != crop.size:
                    crop = crop.resize(snapped, _RESAMPLE[self.config.resample])
                crops.append(crop)
        tensors = [pil_to_tensor(c) for c in crops]
        tiles = [self.encode_tensor(t[None])[0] for t in tensors]
        return AnyResCodes(self.encode(img), tiles, rows, cols)

    def decode_anyres(self, codes: AnyResCodes) -> Image.Image:
        """Stitch decoded tiles back together (the global view is not needed)."""
        imgs = self.decode_batch(codes.tiles)
        widths = [imgs[c].width for c in range(codes.cols)]
        heights = [imgs[r * codes.cols].height for r in range(codes.rows)]
        canvas = Image.new("RGB", (sum(widths), sum(heights)))
        y = 0
        for r in range(codes.rows):
            x = 0
            for c in range(codes.cols):
                canvas.paste(imgs[r * codes.cols + c], (x, y))
                x += widths[c]
            y += heights[r]
        return canvas


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, never half images


def _map_by_shape(items: list, batch_size: int, fn) -> list:
    """Apply ``fn`` to same-shape chunks of ``items`` (at most ``batch_size`` each).

    ``fn`` maps a list of equally shaped items to one output per item; the outputs come
    back in the order of ``items`` (images of different sizes cannot share a batch).
    """
    out: list = [None] * len(items)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            for i, y in zip(chunk, fn([items[i] for i in chunk]), strict=True):
                out[i] = y
    return out
