"""The VQ-GAN of the image tokenizer (taming-transformers' architecture, Esser et al. 2021):
convolutional encoder and decoder around a quantizer adapter over vector-quantize-pytorch.

Sizes come from :class:`ImageConfig` (here, beside the modules it sizes); the tokenizer
around the network (image policy, batching, saving) is :mod:`native_mm.tokenizers.image`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

QUANTIZERS = ("vq", "fsq", "lfq")


@dataclasses.dataclass
class ImageConfig:
    """VQ-GAN architecture, quantizer and preprocessing policy (all JSON-serialisable)."""

    arch: str = "native"  # "native" (this module) or "llamagen" (a LlamaGen VQ checkpoint)
    factor: int = 8  # downsampling factor f: 4, 8 or 16 (code grid = H/f x W/f)
    channels: int = 64  # base width of the first encoder / last decoder stage
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)  # width multipliers, log2(f) + 1 stages
    num_res_blocks: int = 1  # residual blocks per stage
    attention: bool = False  # self-attention block at the lowest resolution
    norm: str = "group"  # "group" (GroupNorm, taming) or "layer" (per-pixel, size-independent)
    z_channels: int = 64  # latent width D fed to the quantizer
    quantizer: str = "vq"  # "vq" (VectorQuantize), "fsq" or "lfq"
    codebook_size: int = 512  # K; for fsq it must equal prod(fsq_levels), for lfq a power of 2
    codebook_dim: int = 16  # vq: low-dimensional code lookup (factorised codes), 0 = D
    use_cosine_sim: bool = False  # vq: l2-normalised codes and inputs
    ema_decay: float = 0.9  # vq: EMA decay of the codebook
    kmeans_init: bool = True  # vq: initialise the codebook by k-means on the first batch
    dead_code_threshold: float = 1.0  # vq: replace codes whose EMA count falls below this
    commitment_weight: float = 0.25  # vq/lfq: commitment loss weight (inside the quantizer)
    fsq_levels: tuple[int, ...] = (8, 8, 8)  # fsq: levels per dimension
    lfq_entropy_weight: float = 0.1  # lfq: entropy auxiliary loss weight
    min_size: int = 32  # images whose longest side is smaller are enlarged to it
    max_size: int = 256  # images whose longest side is larger are shrunk to it
    max_pixels: int = 64_000_000  # decompression-bomb guard (width * height of the file)
    resample: str = "bicubic"  # PIL resampling used by the resize policy
    batch_size: int = 32  # images per forward pass in batch encode/decode

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        if self.factor not in (4, 8, 16):
            raise ValueError(f"factor must be 4, 8 or 16, got {self.factor}")
        if len(self.channel_mult) != int(math.log2(self.factor)) + 1:
            raise ValueError(
                f"channel_mult {self.channel_mult} must have log2(factor) + 1 = "
                f"{int(math.log2(self.factor)) + 1} entries for factor {self.factor}"
            )
        if self.arch not in ("native", "llamagen"):
            raise ValueError(f"arch must be 'native' or 'llamagen', got {self.arch!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq" and self.codebook_size != math.prod(self.fsq_levels):
            raise ValueError(
                f"fsq codebook_size must be prod(fsq_levels) = {math.prod(self.fsq_levels)}, "
                f"got {self.codebook_size}"
            )
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"lfq codebook_size must be a power of 2, got {self.codebook_size}")
        if self.channels % 8 or self.z_channels < 1:
            raise ValueError(f"channels must be a multiple of 8, got {self.channels}")
        if not self.factor <= self.min_size <= self.max_size:
            raise ValueError(f"need factor <= min_size <= max_size, got {self}")
        if self.norm not in ("group", "layer"):
            raise ValueError(f"norm must be 'group' or 'layer', got {self.norm!r}")
        if self.resample not in ("nearest", "bilinear", "bicubic", "lanczos", "box"):
            raise ValueError(f"unknown resample {self.resample!r}")


# ---------------------------------------------------------------- building blocks


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel: no statistics across space, so a region
    is normalised the same way whether it is encoded alone or inside a larger image."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(ch, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.ln(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


def _norm(ch: int, kind: str = "group") -> nn.Module:
    # GroupNorm pools statistics over the whole image, so codes of a region depend on the
    # image size it sits in (measured: -5 to -17 dB PSNR on 32x32 regions of a 256 px
    # photo vs the crop alone, for a model trained on 32 px crops); "layer" does not.
    if kind == "layer":
        return ChannelNorm(ch)
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a (1x1 projected) skip connection."""

    def __init__(self, cin: int, cout: int, norm: str = "group") -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin, norm), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout, norm), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map."""

    def __init__(self, ch: int, norm: str = "group") -> None:
        super().__init__()
        self.norm, self.qkv = _norm(ch, norm), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (t c) h w -> t b 1 (h w) c", t=3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, N, C)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, D, H/f, W/f)."""

    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        n = cfg.norm
        chs = [cfg.channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        cin = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch, n))
                cin = ch
            if i < len(chs) - 1:  # stride-2 conv halves the resolution
                layers.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))
        layers.append(ResBlock(cin, cin, n))
        if cfg.attention:
            layers += [AttnBlock(cin, n), ResBlock(cin, cin, n)]
        layers += [_norm(cin, n), nn.SiLU(), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, h, w) -> (B, 3, h*f, w*f), unbounded (clamp to [-1, 1] for pixels)."""

    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        n = cfg.norm
        chs = [cfg.channels * m for m in cfg.channel_mult][::-1]
        cin = chs[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, cin, 3, padding=1)]
        layers.append(ResBlock(cin, cin, n))
        if cfg.attention:
            layers += [AttnBlock(cin, n), ResBlock(cin, cin, n)]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch, n))
                cin = ch
            if i < len(chs) - 1:  # nearest upsample + conv doubles the resolution
                layers += [
                    nn.Upsample(scale_factor=2.0, mode="nearest"),
                    nn.Conv2d(ch, ch, 3, 1, 1),
                ]
        layers += [_norm(cin, n), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)  # the adaptive GAN weight uses it

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))


# ---------------------------------------------------------------- quantizer adapter


@dataclasses.dataclass
class QuantOut:
    """Quantizer output: ``latents`` (B, N, D), ``indices`` (B, N) int64, ``loss`` scalar."""

    latents: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


class Quantizer(nn.Module):
    """One interface over vqp's quantizers.

    vqp's ``VectorQuantize`` returns ``(quantized, indices, loss)`` and decodes with
    ``get_output_from_indices``; ``FSQ`` returns ``(quantized, indices)`` (int32 indices,
    no loss) and decodes with ``indices_to_codes``; ``LFQ`` returns a named tuple with an
    entropy loss and also decodes with ``indices_to_codes``. All take (B, N, D).
    """

    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

        self.kind, d = cfg.quantizer, cfg.z_channels
        if self.kind == "vq":
            self.q = VectorQuantize(
                dim=d,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim or None,
                decay=cfg.ema_decay,
                kmeans_init=cfg.kmeans_init,
                threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
                use_cosine_sim=cfg.use_cosine_sim,
            )
        elif self.kind == "fsq":
            self.q = FSQ(levels=list(cfg.fsq_levels), dim=d)
        else:
            self.q = LFQ(
                dim=d,
                codebook_size=cfg.codebook_size,
                entropy_loss_weight=cfg.lfq_entropy_weight,
                commitment_loss_weight=cfg.commitment_weight,
            )

    @contextlib.contextmanager
    def _no_kmeans_in_eval(self) -> Any:
        # vqp runs its k-means init on the first forward even in eval mode, which would
        # silently change an untrained tokenizer's codebook (and fingerprint) at encode
        # time; in eval we use the codebook as it is and leave the flag untouched.
        cb = getattr(self.q, "_codebook", None)
        flag = getattr(cb, "initted", None)
        if self.training or flag is None or bool(flag):
            yield
            return
        flag.fill_(True)
        try:
            yield
        finally:
            flag.fill_(False)

    def forward(self, z: torch.Tensor) -> QuantOut:
        with self._no_kmeans_in_eval():
            if self.kind == "vq":
                latents, indices, loss = self.q(z)
            elif self.kind == "fsq":
                latents, indices = self.q(z)
                loss = z.new_zeros(())
            else:
                out = self.q(z)
                latents, indices, loss = out.quantized, out.indices, out.entropy_aux_loss
        return QuantOut(latents, indices.long(), loss.reshape(()))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) int64 -> (B, N, D) latents."""
        if self.kind == "vq":
            return self.q.get_output_from_indices(indices)
        return self.q.indices_to_codes(indices)


class VQGAN(nn.Module):
    """Encoder -> quantizer -> decoder (the generator; the discriminator lives in training)."""

    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.quantizer, self.decoder = Encoder(cfg), Quantizer(cfg), Decoder(cfg)

    def encode(self, x: torch.Tensor) -> QuantOut:
        """(B, 3, H, W) in [-1, 1], H and W multiples of f -> QuantOut with (B, h*w) ids."""
        f = self.cfg.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {f}")
        z = rearrange(self.encoder(x), "b d h w -> b (h w) d")
        return self.quantizer(z)

    def decode_latents(self, latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, D) -> (B, 3, h*f, w*f)."""
        return self.decoder(rearrange(latents, "b (h w) d -> b d h w", h=h, w=w))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, 3, h*f, w*f) unclamped."""
        h, w = codes.shape[-2:]
        latents = self.quantizer.decode_indices(rearrange(codes, "b h w -> b (h w)"))
        return self.decode_latents(latents, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantOut]:
        """(B, 3, H, W) -> reconstruction (B, 3, H, W) and the quantizer output."""
        f = self.cfg.factor
        q = self.encode(x)
        return self.decode_latents(q.latents, x.shape[-2] // f, x.shape[-1] // f), q
