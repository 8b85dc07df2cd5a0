"""Audio tokenizer: EnCodec residual-VQ codes, built from the ``encodec`` package's modules.

Two ways to get one:

* a configurable EnCodec (SEANet encoder/decoder + residual VQ from ``encodec``) trained
  here with :mod:`native_mm.tokenizers.audio_train` (e.g. ``tokenizers/audio/speech8k``);
* Meta's pretrained 24 kHz / 48 kHz EnCodec, read from a LOCAL checkpoint the user gives
  (``AudioTokenizer.from_pretrained("encodec_24khz", "dir/or/file.th")``), checked against
  the checksum in its file name exactly as ``encodec`` does; it is downloaded only when the
  caller passes ``download=True``.

Codes: ``encode(path | Waveform) -> (Q, T)`` int64 with Q = ``config.levels`` (the
bandwidth: how many RVQ levels are used) and T = ceil(N / hop) frames; ``decode((Q', T))``
accepts any Q' <= n_q. Any file soundfile reads, any rate and channel count, is converted
to the model's (torchaudio resampling, channel mean/duplication); long inputs are
encoded in chunks of ``chunk_seconds`` (a multiple of the hop, so frames line up).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from native_mm.tokenizers.base import MediaError, MediaTooLong, TorchTokenizer, Waveform

# Longest audio an AudioTokenizer encodes by default (an input policy, not part of the
# config: it does not change any code, so it is not in the fingerprint). A file is checked
# from its header before any sample is read; longer ones are MediaTooLong, which
# `tokenize` skips and counts. One hour at 48 kHz stereo is ~1.4 GB of float32 samples.
DEFAULT_MAX_SECONDS = 3600.0

# Meta's published checkpoints: name -> (file name whose stem carries the sha256 prefix,
# architecture overrides of AudioConfig).
PRETRAINED: dict[str, tuple[str, dict[str, Any]]] = {
    "encodec_24khz": (
        "encodec_24khz-d7cc33bc.th",
        dict(sample_rate=24000, channels=1, causal=True, norm="weight_norm", normalize=False),
    ),
    "encodec_48khz": (
        "encodec_48khz-7e698e3e.th",
        dict(
            sample_rate=48000,
            channels=2,
            causal=False,
            norm="time_group_norm",
            normalize=True,
            chunk_seconds=1.0,
        ),
    ),
}
ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"


@dataclasses.dataclass
class AudioConfig:
    """Architecture and coding choices of an EnCodec tokenizer (defaults: encodec 24 kHz)."""

    sample_rate: int = 24000  # model sample rate (Hz); inputs are resampled to it
    channels: int = 1  # 1 = mono, 2 = stereo; inputs are mixed down / duplicated
    n_filters: int = 32  # SEANet base width (doubles at every downsampling)
    ratios: list[int] = dataclasses.field(default_factory=lambda: [8, 5, 4, 2])  # hop factors
    dimension: int = 128  # latent (and codebook vector) size
    n_residual_layers: int = 1  # SEANet residual blocks per stage
    lstm: int = 2  # LSTM layers at the bottleneck (0 = none)
    causal: bool = True  # causal convolutions (streaming) or centred ones
    norm: str = "weight_norm"  # conv normalisation: weight_norm | time_group_norm | none
    n_q: int = 32  # RVQ depth the model holds
    codebook_size: int = 1024  # codes per level (a power of two)
    levels: int = 0  # bandwidth: RVQ levels used by encode (0 = all n_q)
    kmeans_iters: int = 50  # k-means iterations initialising each codebook on the 1st batch
    ema_decay: float = 0.99  # EMA decay of the codebook updates
    dead_code_threshold: float = 2.0  # EMA uses per batch below which a code is re-seeded
    normalize: bool = False  # scale each chunk to unit RMS before encoding (encodec 48 kHz)
    chunk_seconds: float = 30.0  # long inputs are encoded chunk by chunk (rounded to hops)
    name: str = "custom"  # "encodec_24khz", "encodec_48khz" or a trained model's name

    def __post_init__(self) -> None:
        self.ratios = [int(r) for r in self.ratios]
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two, got {self.codebook_size}")
        if not 0 <= self.levels <= self.n_q:
            raise ValueError(f"levels must be in [0, n_q={self.n_q}], got {self.levels}")
        if self.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")

    @property
    def hop_length(self) -> int:
        """Samples per code frame."""
        return int(np.prod(self.ratios))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def used_levels(self) -> int:
        return self.levels or self.n_q


def build_encodec(cfg: AudioConfig) -> Any:
    """An ``encodec.EncodecModel`` with ``cfg``'s sizes, built from encodec's modules."""
    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    common = dict(
        channels=cfg.channels,
        dimension=cfg.dimension,
        n_filters=cfg.n_filters,
        n_residual_layers=cfg.n_residual_layers,
        ratios=list(cfg.ratios),
        norm=cfg.norm,
        causal=cfg.causal,
        lstm=cfg.lstm,
    )
    encoder, decoder = SEANetEncoder(**common), SEANetDecoder(**common)
    quantizer = ResidualVectorQuantizer(
        dimension=cfg.dimension,
        n_q=cfg.n_q,
        bins=cfg.codebook_size,
        decay=cfg.ema_decay,
        kmeans_init=True,
        kmeans_iters=cfg.kmeans_iters,
        threshold_ema_dead_code=cfg.dead_code_threshold,
    )
    bw_per_q = math.log2(cfg.codebook_size) * math.ceil(cfg.frame_rate) / 1000
    return EncodecModel(
        encoder,
        decoder,
        quantizer,
        [bw_per_q * cfg.n_q],
        cfg.sample_rate,
        cfg.channels,
        normalize=cfg.normalize,
        name=cfg.name,
    )


def _check(samples: np.ndarray, where: str) -> np.ndarray:
    if samples.size == 0 or samples.shape[-1] == 0:
        raise MediaError(f"{where}: no audio samples")
    if not np.isfinite(samples).all():
        raise MediaError(f"{where}: audio holds NaN or infinite samples")
    return samples


def _check_duration(seconds: float, max_seconds: float | None, where: str) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise MediaTooLong(
            f"{where}: {seconds:.1f} s of audio is longer than max_seconds={max_seconds:g} "
            "(skipped; raise the limit to keep it)"
        )


def read_audio(path: str | Path, max_seconds: float | None = None) -> Waveform:
    """Read any file soundfile understands into a float32 ``(C, N)`` :class:`Waveform`.

    Args:
        path: the audio file.
        max_seconds: refuse longer files (checked from the header before reading, and
            again on the samples read); None = no limit.

    Raises:
        MediaError: missing, unreadable, empty, or NaN/inf-holding file (names the file).
        MediaTooLong: longer than ``max_seconds``.
    """
    import soundfile as sf

    path = Path(path)
    try:
        if max_seconds is not None:
            info = sf.info(str(path))
            _check_duration(info.frames / max(info.samplerate, 1), max_seconds, str(path))
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except MediaError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise MediaError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from None
    _check_duration(data.shape[0] / sr, max_seconds, str(path))  # headers can be wrong
    return Waveform(_check(np.ascontiguousarray(data.T), str(path)), int(sr))


def convert(wav: Waveform, sample_rate: int, channels: int, where: str = "<waveform>") -> Any:
    """Waveform -> float tensor ``(channels, N')`` at ``sample_rate`` (mix down / duplicate)."""
    import torch
    import torchaudio.functional as AF

    x = np.asarray(wav.samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise MediaError(f"{where}: expected samples of shape (C, N), got {x.shape}")
    x = torch.from_numpy(_check(x, where).copy())
    if x.shape[0] != channels:
        x = x.mean(0, keepdim=True).expand(channels, -1).contiguous()
    if wav.sample_rate != sample_rate:
        x = AF.resample(x, int(wav.sample_rate), sample_rate)
    return x


class AudioTokenizer(TorchTokenizer):
    """EnCodec tokenizer: waveform -> ``(Q, T)`` RVQ codes -> waveform."""

    modality = "audio"
    config_class = AudioConfig

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.model = build_encodec(config).eval()
        self.last_n_chunks = 0  # how many chunks the last encode() used (long inputs)
        self.max_seconds: float | None = DEFAULT_MAX_SECONDS  # longer input: MediaTooLong

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def n_levels(self) -> int:
        return self.config.used_levels

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    def code_vectors(self) -> np.ndarray:
        """``(n_levels, K, dimension)``: each RVQ level's codebook (the residuals it adds)."""
        import torch

        layers = self.model.quantizer.vq.layers[: self.n_levels]
        ids = torch.arange(self.codebook_size)[None]  # (1, K)
        with torch.no_grad():
            return np.stack([layer.decode(ids)[0].T.numpy() for layer in layers]).astype(np.float32)

    # ----------------------------------------------------------------- pretrained
    @classmethod
    def from_pretrained(
        cls, name: str, path: str | Path | None = None, download: bool = False, levels: int = 8
    ) -> AudioTokenizer:
        """Meta's pretrained EnCodec from a local checkpoint (or a download if asked).

        Args:
            name: "encodec_24khz" or "encodec_48khz".
            path: the checkpoint file (named ``NAME-CHECKSUM.th``), or a directory holding
                it under its published name (``encodec_24khz-d7cc33bc.th``); the file's
                sha256 must start with the checksum part of its name.
            download: fetch the checkpoint into ``path`` (or torch's hub cache) when missing.
            levels: RVQ levels to use (24 kHz: 2/4/8/16/32 = 1.5/3/6/12/24 kbps).

        Raises:
            MediaError: unknown name, missing file (without ``download``), wrong checksum,
                or weights that do not fit the architecture.
        """
        from native_mm.io import sha256_file

        if name not in PRETRAINED:
            raise MediaError(f"unknown pretrained EnCodec {name!r}; have {sorted(PRETRAINED)}")
        fname, arch = PRETRAINED[name]
        file = Path(path) if path is not None else Path.home() / ".cache/native_mm" / fname
        if file.is_dir() or (path is not None and not file.suffix):
            file = file / fname
        if not file.is_file():
            if not download:
                raise MediaError(
                    f"{file}: pretrained EnCodec checkpoint not found; put {fname} there "
                    f"(from {ENCODEC_URL}{fname}) or pass download=True"
                )
            import torch

            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(ENCODEC_URL + fname, str(file))
        # As in encodec: the checksum is the part of the file name after the last "-"
        # (a file given directly may carry its own, e.g. a re-exported checkpoint).
        stem = file.name.rsplit(".", 1)[0]
        if "-" not in stem:
            raise MediaError(f"{file}: file name must be NAME-SHA256PREFIX.th, like {fname}")
        checksum = stem.rsplit("-", 1)[1].lower()
        actual = sha256_file(file)
        if not actual.startswith(checksum):
            raise MediaError(
                f"{file}: checksum mismatch for {name} (sha256 should start with {checksum}, "
                f"got {actual[: len(checksum)]}); the file is corrupt or not {fname}"
            )
        config = AudioConfig(
            **arch, n_q=32 if name == "encodec_24khz" else 16, levels=levels, name=name
        )
        tok = cls(config)
        from native_mm.io import load_torch

        try:
            tok.model.load_state_dict(load_torch(file))
        except (RuntimeError, ValueError) as e:
            raise MediaError(f"{file}: not an {name} state dict ({e})") from None
        tok.model.eval()
        return tok

    # ----------------------------------------------------------------- coding
    def _prepare(self, media: str | Path | Waveform) -> Any:
        if isinstance(media, Waveform):
            _check_duration(media.duration, self.max_seconds, "<waveform>")
            return convert(media, self.sample_rate, self.config.channels)
        if isinstance(media, (str, Path)):
            wav = read_audio(media, self.max_seconds)
            return convert(wav, self.sample_rate, self.config.channels, str(media))
        raise MediaError(f"cannot encode audio from {type(media).__name__}")

    def encode(self, media: str | Path | Waveform) -> np.ndarray:
        """Audio (path or Waveform) -> int64 codes ``(Q, T)``, T = ceil(N / hop).

        Raises:
            MediaError: unreadable/empty file, NaN or infinite samples.
            MediaTooLong: longer than ``self.max_seconds`` (default
                :data:`DEFAULT_MAX_SECONDS`; None = no limit).
        """
        import torch

        x = self._prepare(media)  # (C, N)
        hop = self.config.hop_length
        chunk = max(1, round(self.config.chunk_seconds * self.sample_rate / hop)) * hop
        q = self.n_levels
        codes = []
        with torch.inference_mode():
            for start in range(0, x.shape[-1], chunk):
                seg = x[None, :, start : start + chunk]  # (1, C, n)
                if self.config.normalize:  # encodec 48 kHz: unit RMS per chunk
                    seg = seg / (
                        seg.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
                    )
                emb = self.model.encoder(seg)  # (1, D, t)
                codes.append(self.model.quantizer.vq.encode(emb, n_q=q)[:, 0])  # (Q, t)
        self.last_n_chunks = len(codes)
        return torch.cat(codes, dim=-1).long().numpy()

    def decode(self, codes: np.ndarray, chunk_frames: int | None = None) -> Waveform:
        """Codes ``(Q', T)`` (Q' <= n_q) -> :class:`Waveform` ``(C, T * hop)``.

        Raises:
            MediaError: wrong shape or codes outside ``[0, codebook_size)``.
        """
        import torch

        codes = np.asarray(codes)
        if codes.ndim != 2 or not 1 <= codes.shape[0] <= self.config.n_q:
            raise MediaError(f"audio codes must be (Q<= {self.config.n_q}, T), got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise MediaError(f"audio codes outside [0, {self.codebook_size})")
        if chunk_frames is None:
            chunk_frames = max(1, round(self.config.chunk_seconds * self.config.frame_rate))
        c = torch.from_numpy(codes.astype(np.int64))
        out = []
        with torch.inference_mode():
            for start in range(0, max(c.shape[-1], 1), chunk_frames):
                part = c[:, None, start : start + chunk_frames]  # (Q, 1, t)
                out.append(self.model.decoder(self.model.quantizer.vq.decode(part))[0])
        wav = torch.cat(out, dim=-1).clamp(-1, 1).float().numpy()
        return Waveform(wav, self.sample_rate)

    def reconstruct(self, media: str | Path | Waveform) -> Waveform:
        """encode then decode, trimmed to the input's length at the model rate."""
        x = self._prepare(media)
        wav = self.decode(self.encode(Waveform(x.numpy(), self.sample_rate)))
        return Waveform(wav.samples[:, : x.shape[-1]], wav.sample_rate)
