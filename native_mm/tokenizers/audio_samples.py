"""Progress of an audio tokenizer's training: held-out samples (WAVs and a spectrogram
PNG of originals beside reconstructions) and a held-out mel distance every
``sample_every`` steps, and the wall-clock cap ``max_minutes``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from native_mm import sources
from native_mm.tokenizers.audio import AudioTokenizer, convert, read_audio
from native_mm.tokenizers.audio_metrics import mel_distance
from native_mm.tokenizers.base import Waveform


def render_samples(tok: AudioTokenizer, files: list[Path], out: Path, title: str) -> None:
    """WAVs of originals and reconstructions plus one spectrogram PNG comparing them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from native_mm.io import save_figure, write_wav

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(files), figsize=(3 * len(files), 5), squeeze=False)
    for j, f in enumerate(files):
        x = convert(read_audio(f), tok.sample_rate, tok.config.channels, str(f))
        rec = tok.reconstruct(Waveform(x.numpy(), tok.sample_rate)).samples
        write_wav(out / f"{j}_original.wav", x.numpy().T, tok.sample_rate)
        write_wav(out / f"{j}_reconstruction.wav", rec.T, tok.sample_rate)
        for i, (sig, name) in enumerate(((x.numpy()[0], "original"), (rec[0], "reconstruction"))):
            ax = axes[i, j]
            ax.specgram(sig + 1e-7, NFFT=256, Fs=tok.sample_rate, noverlap=192, cmap="magma")
            ax.set_title(f"{Path(f).stem} {name}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(out / "spectrogram.png", fig, dpi=90)
    plt.close(fig)


def sample_files(spec: Any, n: int, usable: list[Path]) -> list[Path]:
    """A source's held-out split (evenly spaced), else the first ``n`` of ``usable``."""
    if sources.is_ref(spec.data.source):
        held = sources.load(spec.data.source, "heldout").items
        step = max(1, len(held) // max(n, 1))
        return [Path(p) for p in held[::step][:n]]
    return usable[:n]


def make_sample_callback(spec: Any, out_dir: Path, usable: list[Path]) -> Any:
    """``spec``: an ``AudioTrainSpec``."""
    import lightning as L

    files = sample_files(spec, spec.n_samples, usable)
    cfg = spec.model
    probe = [  # for a quick metric
        convert(read_audio(f), cfg.sample_rate, cfg.channels, str(f))
        for f in sample_files(spec, 24, usable)
    ]

    class Samples(L.Callback):
        """Renders samples every ``sample_every`` steps; stops at ``max_minutes``."""

        start = time.time()

        def on_train_batch_end(self, trainer, module, *args) -> None:
            step = trainer.global_step
            if spec.max_minutes and time.time() - self.start > 60 * spec.max_minutes:
                trainer.should_stop = True
            if spec.sample_every and step % spec.sample_every == 0 and step > 0:
                module.generator.eval()
                dist = np.mean(
                    [
                        mel_distance(
                            module.mel,
                            x[None],
                            torch.from_numpy(
                                module.tok.reconstruct(
                                    Waveform(x.numpy(), module.tok.sample_rate)
                                ).samples
                            )[None],
                        )
                        for x in probe
                    ]
                )
                print(f"step {step}: held-out mel distance {dist:.3f}", flush=True)
                if trainer.logger is not None:
                    trainer.logger.log_metrics({"heldout/mel_distance": float(dist)}, step)
                render_samples(
                    module.tok,
                    files,
                    out_dir / "samples" / f"step{step:06d}",
                    f"held-out voices, step {step}",
                )
                module.generator.train()

    return Samples()
