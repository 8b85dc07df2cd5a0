"""Training-data augmentation for the digits corpus: writers for images, rooms and
microphones for speech.

Speech augmentation imitates what separates a synthesizer's clean output from a real
recording, so that the model learns the words and not one synthesizer's signal:
speaker (speed, pitch, vocal-tract length), room (reverb), channel (telephone band with
8-bit mu-law, level, DC offset), background noise at a random SNR, and leading/trailing
silence. audiomentations (with pyroomacoustics for the rooms) does the signal work.
"""

from __future__ import annotations

import functools
import random

import numpy as np


def augment_image(img, rng: np.random.Generator):  # PIL.Image -> PIL.Image
    """A small random affine warp: rotation +-10 deg, scale 0.9-1.1, shift +-6% of the side."""
    from PIL import Image

    n = img.size[0]
    angle = float(rng.uniform(-10, 10))
    scale = float(rng.uniform(0.9, 1.1))
    tx, ty = (float(v) for v in rng.uniform(-0.06, 0.06, 2) * n)
    a = np.deg2rad(angle)
    # inverse map output -> input around the centre
    c, s = np.cos(a) / scale, np.sin(a) / scale
    cx = cy = (n - 1) / 2
    coeffs = (
        c, s, cx - c * (cx + tx) - s * (cy + ty),
        -s, c, cy + s * (cx + tx) - c * (cy + ty),
    )  # fmt: skip
    return img.transform((n, n), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def speed(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation x0.85-1.15 (tempo, pitch and formants together)."""
    import torch
    import torchaudio.functional as AF

    # rates on a 1/40 grid keep the polyphase resampling kernel small (gcd = sr / 40)
    steps = int(rng.integers(-6, 7))  # factor = 1 + steps / 40 in [0.85, 1.15]
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), sr + steps * sr // 40, sr)
    return y.numpy()


def speed_gain(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The narrow augmentation: speed x0.85-1.15 and peak level 0.4-0.8, nothing else (the
    corpus' ``audio_augment_kind: speed_gain``; the main job before issue 17 used it)."""
    y = speed(x, sr, rng)
    y = y / max(float(np.abs(y).max()), 1e-6) * float(rng.uniform(0.5, 1.0)) * 0.8
    return y.astype(np.float32)


def vocal_tract(x: np.ndarray, rng: np.random.Generator, lo: float = 0.88, hi: float = 1.12):
    """Vocal-tract-length perturbation: the magnitude spectrum warped along frequency by a
    factor in [lo, hi] (formants move, the harmonics' phases stay), a new speaker's tract."""
    import torch

    alpha = float(rng.uniform(lo, hi))
    n_fft, hop = 256, 64
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    win = torch.hann_window(n_fft)
    spec = torch.stft(t, n_fft, hop, window=win, return_complex=True)  # (F, T)
    bins = spec.shape[0]
    src = torch.arange(bins, dtype=torch.float32) / alpha  # output bin f reads input f / alpha
    lo_i = src.floor().long().clamp(max=bins - 1)
    hi_i = (lo_i + 1).clamp(max=bins - 1)
    frac = (src - lo_i).unsqueeze(1)
    mag = spec.abs()
    warped = (mag[lo_i] * (1 - frac) + mag[hi_i] * frac) * (src <= bins - 1).unsqueeze(1)
    out = torch.polar(warped, spec.angle())
    return torch.istft(out, n_fft, hop, window=win, length=len(x)).numpy()


def _mu_law(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """8-bit mu-law coding, as on a telephone line."""
    import torch
    import torchaudio.functional as AF

    t = torch.from_numpy(np.clip(x, -1, 1).astype(np.float32))
    return AF.mu_law_decoding(AF.mu_law_encoding(t, 256), 256).numpy()


@functools.cache
def _channel(sr: int):
    """Room, noise and telephone line (audiomentations), built once per sample rate."""
    import audiomentations as A

    return A.Compose([
        A.RoomSimulator(p=0.35, min_size_x=2.5, max_size_x=8, min_size_y=2.5, max_size_y=8,
                        min_size_z=2.4, max_size_z=3.5, min_absorption_value=0.1,
                        max_absorption_value=0.5, max_order=6, leave_length_unchanged=True,
                        use_ray_tracing=False),
        A.OneOf([A.AddGaussianSNR(min_snr_db=5, max_snr_db=35),
                 A.AddColorNoise(min_snr_db=5, max_snr_db=35)], p=0.5),
        A.Compose([A.HighPassFilter(250, 350, p=1.0), A.LowPassFilter(3000, 3400, p=1.0),
                   A.Lambda(_mu_law, p=1.0)], p=0.2),
        A.Gain(min_gain_db=-18, max_gain_db=0, p=1.0),
    ])  # fmt: skip


def silence(x: np.ndarray, sr: int, rng: np.random.Generator, most: float = 0.25) -> np.ndarray:
    """Up to ``most`` seconds of faint noise before and after the word."""
    a, b = (int(v) for v in rng.integers(0, int(most * sr), 2))
    floor = float(rng.uniform(1e-4, 3e-3))
    y = np.concatenate([rng.normal(0, floor, a), x, rng.normal(0, floor, b)])
    return y.astype(np.float32)


def augment_audio(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a clean clip: speaker, room, channel, noise, level, silence.

    Args:
        x: mono float32 samples ``(N,)`` at ``sr`` Hz, peak about 0.8.
    """
    y = speed(x, sr, rng)
    if rng.random() < 0.5:
        y = vocal_tract(y, rng)
    y = y / max(float(np.abs(y).max()), 1e-6) * 0.8
    y = silence(y.astype(np.float32), sr, rng)
    seed = int(rng.integers(2**31))  # audiomentations draws from the global generators
    random.seed(seed)
    np.random.seed(seed)
    y = _channel(sr)(samples=y, sample_rate=sr)
    y = y + float(rng.uniform(-0.02, 0.02))  # DC offset of a cheap input
    return np.clip(y, -1, 1).astype(np.float32)
