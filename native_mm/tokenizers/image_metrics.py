"""How the image VQ-GAN's reconstructions are scored: the PatchGAN discriminator and the
optional VGG16 perceptual loss used in training, and PSNR, SSIM and codebook statistics
used in training logs and in ``native-mm tokenizer eval image``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from native_mm.io import load_torch

# ---------------------------------------------------------------- losses


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., 2017): (B, 3, H, W) -> (B, 1, h', w') real/fake logits."""

    def __init__(self, layers: int = 2, ch: int = 32) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for _ in range(1, layers):
            mods += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods += [nn.Conv2d(c, 2 * c, 3, 1, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
        mods.append(nn.Conv2d(2 * c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# torchvision's VGG16 "D" configuration; layer indices match its state-dict keys.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 features (channel-normalised, no learned weights).

    Args:
        weights: local file holding a torchvision ``vgg16`` state dict (or just its
            ``features.*`` part); nothing is downloaded.
        depth: number of VGG stages used (1-5).
    """

    def __init__(self, weights: str | Path, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.taps = _VGG_TAPS[:depth]
        self.features = nn.Sequential(*layers[: self.taps[-1] + 1])
        state = load_torch(weights)
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: expected a VGG16 state dict")
        state = {k.removeprefix("features."): v for k, v in state.items()}
        keep = {k: v for k, v in state.items() if int(k.split(".")[0]) <= self.taps[-1]}
        try:
            self.features.load_state_dict(keep)
        except RuntimeError as e:
            raise ValueError(f"{weights}: not a torchvision VGG16 state dict ({e})") from None
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen feature extractor: always eval

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, H, W) in [-1, 1] -> scalar distance."""
        h = torch.cat([x, y]).add(1).div(2).sub(self.mean).div(self.std)
        loss = h.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                a, b = F.normalize(h, dim=1).chunk(2)
                loss = loss + (a - b).pow(2).sum(1).mean()
        return loss


# ---------------------------------------------------------------- metrics


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) tensors in [-1, 1] (peak = 1 on a [0, 1] scale)."""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al., 2004), Gaussian window, mean over channels and pixels.

    Args:
        x, y: (B, 3, H, W) in [-1, 1]. ``window`` shrinks to the image size for tiny images.
    """
    x, y = (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=x.dtype) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def codebook_stats(codes: list[np.ndarray], codebook_size: int) -> dict[str, float]:
    """Fraction of codes used and perplexity (exp of the code-usage entropy)."""
    counts = np.bincount(np.concatenate([c.ravel() for c in codes]), minlength=codebook_size)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "codebook_usage": float((counts > 0).mean()),
        "codes_used": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
    }
