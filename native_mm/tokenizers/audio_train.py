"""Training and evaluation of the EnCodec audio tokenizer (Lightning, spec YAML, CLI).

Losses (EnCodec, Défossez et al. 2022, with fixed weights instead of the loss balancer):
time-domain L1, multi-scale mel (L1 on mel + L2 on log-mel over several STFT sizes), the
RVQ commitment loss, and, from ``disc_start`` on, the hinge adversarial loss and the
relative feature-matching loss of ``encodec``'s multi-scale STFT discriminator
(``encodec.msstftd.MultiScaleSTFTDiscriminator``; encodec 0.1.1 ships the discriminator
but not its losses, which are written here). Quantizer dropout (a random number of RVQ
levels per batch) keeps the first levels useful alone, so fewer levels can be chosen.
With ``loss.content`` and a labelled source, a small head reads the first RVQ level and
predicts each crop's label (what is said): the first level's tokens then carry the words
the same way across voices and recording conditions, as the supervised semantic tokens of
CosyVoice or SpeechTokenizer's distilled first level do, which is what a language model
reading one level needs. The head is dropped when the tokenizer is saved.

Data: a source reference (``package.module:function``, see :mod:`native_mm.sources`; its
``train`` split), a folder of audio files, or the audio segments of a documents JSONL;
random crops with augmentation (gain, speed/pitch by resampling, small noise). Every file
is read once before training: unreadable, empty, NaN-holding or
longer-than-``data.max_seconds`` files and JSONL records the validator refuses are skipped
and counted in ``OUT/data_report.json``; any rate and channel count is converted.

    native-mm tokenizer train audio --config tokenizers/audio/speech8k.yaml --out DIR [k=v ...]
    native-mm tokenizer eval audio --tokenizer DIR --data native_mm.apps.digits.sources:speech \\
        --split heldout --out metrics.json
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from native_mm import cli_help, sources
from native_mm.inputs import is_foreign, media_documents
from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer, convert, read_audio
from native_mm.tokenizers.audio_metrics import (
    MultiScaleMel,
    feature_matching,
    hinge_d,
    hinge_g,
    mel_loss,
)
from native_mm.tokenizers.audio_samples import make_sample_callback, render_samples, sample_files
from native_mm.tokenizers.trainer import (
    DataReport,
    TrainerSpec,
    fit_tokenizer,
    load_spec,
    make_train_loader,
    write_data_report,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".mp3")


@dataclasses.dataclass
class AudioDataSpec:
    """Where training audio comes from and how it is cut and augmented."""

    source: str = ""  # a "module:function" source, a folder of audio files, a .jsonl, or a
    # .tar / .parquet / datasets folder (its clips, transcribed or not)
    segment_seconds: float = 0.8  # crop length (shorter clips are zero-padded)
    batch_size: int = 16  # clips per step
    gain_db: list[float] = dataclasses.field(default_factory=lambda: [-12.0, 3.0])  # range
    speed: list[float] = dataclasses.field(default_factory=lambda: [0.85, 1.15])  # resampling
    noise_snr_db: list[float] = dataclasses.field(default_factory=lambda: [30.0, 60.0])  # range
    augment: bool = True  # apply gain / speed / noise
    num_workers: int = 0  # DataLoader workers
    max_seconds: float = 600.0  # longer files are skipped and counted (clips stay in memory)


@dataclasses.dataclass
class AudioLossSpec:
    """Loss weights and the discriminator schedule."""

    time_l1: float = 0.1  # weight of the waveform L1
    mel: float = 1.0  # weight of the multi-scale mel loss
    mel_scales: list[int] = dataclasses.field(default_factory=lambda: [64, 128, 256, 512, 1024])
    commitment: float = 1.0  # weight of the RVQ commitment loss
    adversarial: float = 1.0  # weight of the generator's hinge loss
    feature: float = 2.0  # weight of the relative feature-matching loss
    disc_start: int = 500  # optimiser step at which the discriminator starts
    disc_filters: int = 16  # discriminator width
    disc_n_ffts: list[int] = dataclasses.field(default_factory=lambda: [256, 512, 128])
    quantizer_dropout: float = 0.5  # probability of a random (smaller) RVQ depth per batch
    init_batches: int = 8  # batches of crops whose latents k-means-initialise the codebooks
    quant_start: int = 0  # steps trained as a plain autoencoder before the RVQ is switched on
    content: float = 0.0  # weight of the first level's label cross-entropy (labelled sources)


@dataclasses.dataclass
class AudioTrainSpec:
    """A spec YAML under ``tokenizers/audio/``."""

    model: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    data: AudioDataSpec = dataclasses.field(default_factory=AudioDataSpec)
    loss: AudioLossSpec = dataclasses.field(default_factory=AudioLossSpec)
    trainer: TrainerSpec = dataclasses.field(default_factory=TrainerSpec)
    lr: float = 1e-3  # generator Adam learning rate
    disc_lr: float = 3e-4  # discriminator Adam learning rate
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.9])  # Adam betas
    sample_every: int = 500  # steps between WAV/PNG samples (0 = only at the end)
    max_minutes: float = 0.0  # stop after this much wall clock in one run (0 = no limit)
    n_samples: int = 4  # held-out clips rendered as samples


# --------------------------------------------------------------------------- data
def source_labels(spec: AudioDataSpec) -> dict[str, int] | None:
    """``{file path: label}`` of a labelled source reference's ``train`` split, else None."""
    if not sources.is_ref(spec.source):
        return None
    media = sources.load(spec.source, "train")
    if media.labels is None:
        return None
    return {str(Path(p)): int(y) for p, y in zip(media.items, media.labels, strict=True)}


def list_audio(spec: AudioDataSpec, report: DataReport | None = None) -> list[Path]:
    """Audio files of the data source (a source reference: its ``train`` split).

    With ``report``, bad JSONL records are skipped and counted there; without, the first
    one raises :class:`native_mm.documents.DocumentError`.
    """
    src = spec.source
    if sources.is_ref(src):
        return [Path(p) for p in sources.load(src, "train").items]
    path, foreign = Path(src), None
    if is_foreign(path):  # a tar, Parquet file or datasets folder: its media as documents
        path, foreign = media_documents(path)
    if path.suffix == ".jsonl":
        from native_mm.documents import SkipReport, read_documents

        skips = SkipReport()
        on_error = "skip" if report is not None else "raise"
        docs = read_documents(path, on_error=on_error, report=skips)
        files = [Path(s.value) for d in docs for s in d.segments if s.kind == "audio"]
        if report is not None:
            report.add_invalid(skips)
            if foreign is not None:
                report.add_invalid(foreign)
        return files
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        )
        if not files:
            raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return files
    raise ValueError(f"data.source {src!r}: not a 'module:function' source, a folder or a .jsonl")


class ClipDataset(torch.utils.data.Dataset):
    """Random fixed-length crops of in-memory clips with gain/speed/noise augmentation;
    ``(crop, label)`` pairs when the clips are labelled."""

    def __init__(
        self,
        clips: list[torch.Tensor],
        sample_rate: int,
        spec: AudioDataSpec,
        length: int,
        seed: int = 0,
        labels: list[int] | None = None,
    ) -> None:
        if not clips:
            raise ValueError("no training audio")
        if labels is not None and len(labels) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
        self.clips, self.sr, self.spec, self.length = clips, sample_rate, spec, length
        self.labels = labels
        self.seed = seed  # item i draws from (seed, i) only: resumable, worker-independent
        self.seg = int(spec.segment_seconds * sample_rate)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        import torchaudio.functional as AF

        rng = random.Random(i * 7919 + self.seed)
        k = rng.randrange(len(self.clips))
        x = self.clips[k]  # (C, N)
        s = self.spec
        if s.augment and s.speed[1] > s.speed[0]:
            factor = rng.uniform(*s.speed)  # >1 = faster and higher
            new = int(round(self.sr / factor / 100)) * 100
            if new != self.sr:
                x = AF.resample(x, self.sr, new)
        n = x.shape[-1]
        if n >= self.seg:
            start = rng.randrange(n - self.seg + 1)
            x = x[:, start : start + self.seg]
        else:  # pad at a random offset
            left = rng.randrange(self.seg - n + 1)
            x = F.pad(x, (left, self.seg - n - left))
        if s.augment:
            x = x * 10 ** (rng.uniform(*s.gain_db) / 20)
            rms = x.pow(2).mean().sqrt()
            snr = rng.uniform(*s.noise_snr_db)
            gen = torch.Generator().manual_seed(rng.randrange(2**31))
            x = x + torch.randn(x.shape, generator=gen) * rms * 10 ** (-snr / 20)
            x = x.clamp(-1, 1)
        return x if self.labels is None else (x, self.labels[k])


# --------------------------------------------------------------------------- module
class ContentHead(torch.nn.Module):
    """Reads first-level quantized latents ``(B, D, T)`` -> label logits ``(B, n_classes)``:
    two small convolutions, mean and max over time, a linear layer."""

    def __init__(self, dimension: int, n_classes: int, width: int = 128) -> None:
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv1d(dimension, width, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv1d(width, width, 3, padding=1),
            torch.nn.GELU(),
        )
        self.out = torch.nn.Linear(2 * width, n_classes)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        h = self.convs(q)
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], -1))


def make_module(spec: AudioTrainSpec, n_classes: int = 0) -> Any:
    """The LightningModule for ``spec`` (imports lightning lazily); ``n_classes`` > 0 adds
    the content head (``loss.content``)."""
    import lightning as L
    from encodec.msstftd import MultiScaleSTFTDiscriminator

    class _Module(L.LightningModule):
        """EnCodec generator (encoder + RVQ + decoder) and MS-STFT discriminator."""

        def __init__(self) -> None:
            super().__init__()
            self.spec = spec
            self.automatic_optimization = False  # G and D alternate
            self.tok = AudioTokenizer(spec.model)
            self.generator = self.tok.model.train()
            ls = spec.loss
            self.disc = MultiScaleSTFTDiscriminator(
                filters=ls.disc_filters,
                in_channels=spec.model.channels,
                n_ffts=ls.disc_n_ffts,
                hop_lengths=[n // 4 for n in ls.disc_n_ffts],
                win_lengths=ls.disc_n_ffts,
            )
            self.mel = MultiScaleMel(spec.model.sample_rate, ls.mel_scales)
            self.d_steps = 0
            self.content = ContentHead(spec.model.dimension, n_classes) if n_classes else None

        def reconstruct(self, x: torch.Tensor, n_q: int | None = None, emb=None):
            """x (B, C, N) -> (y (B, C, N), codes (Q, B, T), commitment loss)."""
            emb = self.generator.encoder(x) if emb is None else emb
            q, codes, commit = self.generator.quantizer.vq(emb, n_q=n_q)
            y = self.generator.decoder(q)[..., : x.shape[-1]]
            return y, codes, commit.mean()

        def content_loss(self, emb: torch.Tensor, codes, labels: torch.Tensor):
            """Cross-entropy of the head reading the first level (straight-through to the
            encoder); before the RVQ starts it reads the latents themselves."""
            q1 = emb
            if codes is not None:
                with torch.no_grad():
                    q1 = self.generator.quantizer.vq.layers[0].decode(codes[0])
                q1 = emb + (q1 - emb).detach()
            return F.cross_entropy(self.content(q1), labels)

        def on_train_start(self) -> None:
            if self.global_step >= self.spec.loss.quant_start:
                self.init_codebooks()

        def init_codebooks(self) -> None:
            # k-means-initialise the codebooks on many crops rather than on the first small
            # batch (200 frames cannot seed 256 codes); skipped when resuming.
            vq = self.generator.quantizer.vq
            if bool(vq.layers[0]._codebook.inited) or self.trainer is None:
                return
            loader = self.trainer.train_dataloader
            ds = loader.dataset if loader is not None else None
            if ds is None:
                return
            n = min(len(ds), self.spec.loss.init_batches * self.spec.data.batch_size)
            items = [ds[i] for i in range(n)]
            x = torch.stack([t[0] if isinstance(t, tuple) else t for t in items]).to(self.device)
            with torch.no_grad():
                vq(self.generator.encoder(x))

        def training_step(self, batch, batch_idx: int) -> None:
            opt_g, opt_d = self.optimizers()
            ls = self.spec.loss
            x, labels = batch if isinstance(batch, list | tuple) else (batch, None)
            n_q = None
            if random.random() < ls.quantizer_dropout:
                n_q = random.randint(1, self.spec.model.n_q)
            if self.global_step < ls.quant_start:
                # Warm-up as a plain autoencoder: with RVQ from step 0 the decoder learnt to
                # ignore codes drawn from a random encoder and the latents collapsed.
                emb, codes = self.generator.encoder(x), None
                y = self.generator.decoder(emb)[..., : x.shape[-1]]
                commit = x.new_zeros(())
            else:
                self.init_codebooks()  # no-op once initialised
                emb = self.generator.encoder(x)
                y, codes, commit = self.reconstruct(x, n_q, emb)
            l_time = F.l1_loss(y, x)
            l_mel = mel_loss(self.mel, x, y)
            loss = ls.time_l1 * l_time + ls.mel * l_mel + ls.commitment * commit
            adv_on = self.global_step >= ls.disc_start and (ls.adversarial or ls.feature)
            logs = {"loss/time_l1": l_time, "loss/mel": l_mel, "loss/commit": commit}
            if self.content is not None and labels is not None:
                l_content = self.content_loss(emb, codes, labels)
                loss = loss + ls.content * l_content
                logs["loss/content"] = l_content
            if adv_on:
                # Discriminator step on detached reconstructions. Its optimiser is stepped
                # directly so that Lightning's global_step counts generator steps only.
                # Real and fake go through D in one pass; the real feature maps of that
                # pass (before D's update) are the feature-matching targets.
                b = x.shape[0]
                logits, feats = self.disc(torch.cat([x, y.detach()]))
                l_d = hinge_d([t[:b] for t in logits], [t[b:] for t in logits])
                real_feats = [[f[:b].detach() for f in fs] for fs in feats]
                opt_d.zero_grad()
                self.manual_backward(l_d)
                opt_d.optimizer.step()
                self.d_steps += 1
                logs["loss/disc"] = l_d
                fake_logits, fake_feats = self.disc(y)
                l_adv, l_feat = hinge_g(fake_logits), feature_matching(real_feats, fake_feats)
                loss = loss + ls.adversarial * l_adv + ls.feature * l_feat
                logs |= {"loss/adv": l_adv, "loss/feat": l_feat}
            opt_g.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt_g, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
            opt_g.step()
            logs["loss/total"] = loss
            self.log_dict({k: float(v.detach()) for k, v in logs.items()}, prog_bar=False)

        def configure_optimizers(self):
            b = tuple(self.spec.betas)
            g_params = list(self.generator.parameters())
            if self.content is not None:
                g_params += list(self.content.parameters())
            return (
                torch.optim.Adam(g_params, lr=self.spec.lr, betas=b),
                torch.optim.Adam(self.disc.parameters(), lr=self.spec.disc_lr, betas=b),
            )

    return _Module()


# --------------------------------------------------------------------------- CLI
def train(spec: AudioTrainSpec, out_dir: str | Path) -> AudioTokenizer:
    """Fit a tokenizer for ``spec`` into ``out_dir`` (resuming) and save it there."""
    out_dir = Path(out_dir)
    if spec.trainer.num_threads:
        torch.set_num_threads(spec.trainer.num_threads)
    report = DataReport(spec.data.source)
    cfg, limit = spec.model, spec.data.max_seconds
    loaded = report.load(
        list_audio(spec.data, report),
        lambda f: convert(read_audio(f, limit), cfg.sample_rate, cfg.channels, str(f)),
    )
    report.check_nonempty("audio files")
    write_data_report(out_dir, {"train": report})
    files, clips = [f for f, _ in loaded], [c for _, c in loaded]
    labels = None
    if spec.loss.content:
        by_path = source_labels(spec.data)
        if by_path is None:
            raise ValueError(
                f"loss.content = {spec.loss.content}: the content loss needs a labelled "
                f"source ('module:function' returning labels); {spec.data.source!r} has none"
            )
        labels = [by_path[str(f)] for f in files]
    n_items = spec.trainer.max_steps * spec.data.batch_size
    ds = ClipDataset(clips, spec.model.sample_rate, spec.data, n_items, spec.trainer.seed, labels)
    loader = make_train_loader(
        ds, spec.data.batch_size, spec.trainer, num_workers=spec.data.num_workers
    )
    torch.manual_seed(spec.trainer.seed)  # the initial weights too: reproducible runs
    module = make_module(spec, 1 + max(labels) if labels else 0)
    t0 = time.time()
    trainer = fit_tokenizer(
        module,
        loader,
        out_dir,
        spec.trainer,
        callbacks=[make_sample_callback(spec, out_dir, files)],
    )
    tok = module.tok
    tok.model.eval()
    tok.save(out_dir)
    with (out_dir / "train_log.txt").open("a") as f:
        f.write(
            json.dumps(
                {
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "global_step": trainer.global_step,
                    "disc_steps": module.d_steps,
                    "wall_seconds_this_run": round(time.time() - t0, 1),
                    "train_files": len(files),
                    "spec": dataclasses.asdict(spec),
                }
            )
            + "\n"
        )
    render_samples(
        tok,
        sample_files(spec, spec.n_samples, files),
        out_dir / "samples" / "final",
        f"held-out voices, final (step {trainer.global_step})",
    )
    return tok


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``native-mm tokenizer train audio --config YAML --out DIR [key=value ...]``."""
    ap = cli_help.parser(prog, "Train the EnCodec audio tokenizer.")
    ap.add_argument("--config", required=True, help="spec YAML (tokenizers/audio/*.yaml)")
    ap.add_argument("--out", required=True, help="output directory (resumes if it has one)")
    ap.add_argument("overrides", nargs="*", help="spec overrides such as trainer.max_steps=10")
    args = ap.parse_args(argv)
    spec = load_spec(AudioTrainSpec, args.config, args.overrides)
    tok = train(spec, args.out)
    print(f"saved audio tokenizer to {args.out} (fingerprint {tok.fingerprint()[:12]})")
    return 0
