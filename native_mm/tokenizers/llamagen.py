"""LlamaGen's VQ image tokenizer (Sun et al. 2024) in its published weight layout, so its
released checkpoints load from a local file and serve as the image tokenizer.

LlamaGen's VQ is taming-transformers' VQ-GAN with a low-dimensional, l2-normalised
codebook (8-dim codes: nearest code by cosine) between ``quant_conv`` and
``post_quant_conv``. The module names here are that layout's (``encoder.conv_blocks.0.res.0
.norm1.weight``, ``quantize.embedding.weight``, ...), since they are what a checkpoint
holds; the sizes are read from the checkpoint itself (:func:`config_from_state_dict`).
:class:`LlamaGenVQ` offers the methods of our own VQ-GAN, so
:class:`native_mm.tokenizers.image.ImageTokenizer` wraps either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from native_mm.tokenizers.vqgan import ImageConfig, QuantOut


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), _conv(cin, cout)
        self.norm2, self.conv2 = _norm(cout), _conv(cout, cout)
        if cin != cout:
            self.nin_shortcut = _conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Attn(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v, self.proj_out = (_conv(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.norm(x)
        q, k, v = (rearrange(f(y), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k / sqrt(c)) v, one head
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _conv(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom, then a stride-2 conv


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _conv(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(cin: int, cout: int, n_res: int, attn: bool) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList(_Res(cin if i == 0 else cout, cout) for i in range(n_res))
    level.attn = nn.ModuleList(_Attn(cout) for _ in range(n_res if attn else 0))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, res in enumerate(level.res):
        h = res(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _mid(ch: int) -> nn.ModuleList:
    return nn.ModuleList([_Res(ch, ch), _Attn(ch), _Res(ch, ch)])


class _Encoder(nn.Module):
    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        ch, mult, last = cfg.channels, cfg.channel_mult, len(cfg.channel_mult) - 1
        self.conv_in = _conv(3, ch)
        self.conv_blocks = nn.ModuleList()
        for i, m in enumerate(mult):
            level = _level(ch * (1, *mult)[i], ch * m, cfg.num_res_blocks, attn=i == last)
            if i != last:
                level.downsample = _Down(ch * m)
            self.conv_blocks.append(level)
        self.mid = _mid(ch * mult[-1])
        self.norm_out, self.conv_out = _norm(ch * mult[-1]), _conv(ch * mult[-1], cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            h = level.downsample(h) if hasattr(level, "downsample") else h
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        ch, mult, last = cfg.channels, cfg.channel_mult, len(cfg.channel_mult) - 1
        block_in = ch * mult[-1]
        self.conv_in = _conv(cfg.z_channels, block_in)
        self.mid = _mid(block_in)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):  # the deepest level first
            level = _level(block_in, ch * mult[i], cfg.num_res_blocks + 1, attn=i == last)
            block_in = ch * mult[i]
            if i != 0:
                level.upsample = _Up(block_in)
            self.conv_blocks.append(level)
        self.norm_out, self.conv_out = _norm(block_in), _conv(block_in, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            h = level.upsample(h) if hasattr(level, "upsample") else h
        return self.conv_out(F.silu(self.norm_out(h)))


class _Codebook(nn.Module):
    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        self.l2 = cfg.use_cosine_sim
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)

    def table(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2 else w


class LlamaGenVQ(nn.Module):
    """LlamaGen's VQ model with our VQ-GAN's interface (encode, decode_codes, ...)."""

    def __init__(self, cfg: ImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = _Encoder(cfg), _Decoder(cfg)
        self.quantize = _Codebook(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    @property
    def quantizer(self) -> LlamaGenVQ:  # what ImageTokenizer.code_vectors asks for
        return self

    def encode(self, x: torch.Tensor) -> QuantOut:
        """(B, 3, H, W) in [-1, 1] -> the nearest codes of (B, h*w) positions."""
        z = rearrange(self.quant_conv(self.encoder(x)), "b d h w -> b (h w) d")
        table = self.quantize.table()
        z = F.normalize(z, dim=-1) if self.quantize.l2 else z
        dist = (z * z).sum(-1, keepdim=True) + (table * table).sum(-1) - 2 * z @ table.T
        indices = dist.argmin(-1)
        return QuantOut(table[indices], indices, z.new_zeros(()))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) int64 -> (B, N, codebook_dim) code vectors."""
        return self.quantize.table()[indices]

    def decode_latents(self, latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
        z = rearrange(latents, "b (h w) d -> b d h w", h=h, w=w)
        return self.decoder(self.post_quant_conv(z))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, 3, h*f, w*f) unclamped."""
        h, w = codes.shape[-2:]
        return self.decode_latents(self.decode_indices(rearrange(codes, "b h w -> b (h w)")), h, w)


def config_from_state_dict(sd: dict[str, torch.Tensor], **policy: object) -> ImageConfig:
    """The sizes of a LlamaGen VQ checkpoint, read from its tensors (``policy``: the image
    size policy, e.g. ``max_size``)."""
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.conv_blocks."))
    mult = tuple(
        sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in range(levels)
    )
    n_res = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.conv_blocks.0.res."))
    k, d = sd["quantize.embedding.weight"].shape
    return ImageConfig(
        arch="llamagen", factor=2 ** (levels - 1), channels=ch, channel_mult=mult,
        num_res_blocks=n_res, attention=True, z_channels=sd["encoder.conv_out.weight"].shape[0],
        codebook_size=k, codebook_dim=d, use_cosine_sim=True, kmeans_init=False, **policy,
    )  # fmt: skip
