"""How the audio codec's reconstructions are scored: the multi-scale mel loss and
distance, SI-SNR, and the hinge / feature-matching losses of EnCodec's STFT discriminator
(Defossez et al. 2022, eq. 1-2; encodec ships the discriminator but not its losses)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- losses
class MultiScaleMel(nn.Module):
    """Mel spectrograms at several STFT sizes (window = n_fft, hop = n_fft / 4)."""

    def __init__(self, sample_rate: int, scales: list[int], n_mels: int = 64) -> None:
        import torchaudio

        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate,
                n_fft=n,
                hop_length=n // 4,
                n_mels=min(n_mels, n // 8),
                f_min=0.0,
                power=1.0,
                normalized=False,
            )
            for n in scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, C, N) -> per scale mel magnitudes (B, C, M, F)."""
        return [m(x) for m in self.mels]


def mel_loss(mel: MultiScaleMel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Frequency loss: L1 on mel + L1 on log-mel (floored at 1e-4), averaged over scales.

    EnCodec uses L2 on log-mel; with short crops zero-padded to the segment length, L2 on
    the log of exact silence dominated the loss, so the log term is L1 as in audiocraft's
    ``MelSpectrogramL1Loss``.
    """
    total = x.new_zeros(())
    for mx, my in zip(mel(x), mel(y), strict=True):
        log_x, log_y = torch.log(mx.clamp(min=1e-4)), torch.log(my.clamp(min=1e-4))
        total = total + F.l1_loss(my, mx) + F.l1_loss(log_y, log_x)
    return total / len(mel.mels)


def mel_distance(mel: MultiScaleMel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Multi-scale log-mel distance: mean |ln(mel_x + 1e-5) - ln(mel_y + 1e-5)| over scales."""
    with torch.no_grad():
        d = [
            (torch.log(mx + 1e-5) - torch.log(my + 1e-5)).abs().mean()
            for mx, my in zip(mel(x), mel(y), strict=True)
        ]
    return float(torch.stack(d).mean())


def si_snr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant SNR in dB of ``est`` against ``ref`` (same length, mono)."""
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref + eps) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + eps) / (noise @ noise + eps)))


def hinge_d(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(
        F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)
    ) / len(real)


def hinge_g(fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f in fake) / len(fake)


def feature_matching(
    real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Relative L1 between discriminator feature maps (EnCodec eq. 2)."""
    terms = [
        F.l1_loss(f, r.detach()) / (r.detach().abs().mean() + 1e-8)
        for rs, fs in zip(real, fake, strict=True)
        for r, f in zip(rs, fs, strict=True)
    ]
    return sum(terms) / len(terms)
