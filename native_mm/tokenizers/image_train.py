"""Training and evaluation of the image VQ-GAN (``native-mm tokenizer train|eval image``).

Losses (taming-transformers recipe): L1 and/or L2 reconstruction, the quantizer's
commitment / auxiliary loss, an optional perceptual loss (VGG16 features loaded from a
user-given local weights file; nothing is downloaded), and a PatchGAN hinge loss that
starts at ``disc_start`` with the adaptive weight of Esser et al. (ratio of the gradient
norms of the reconstruction and GAN losses at the decoder's last layer).

Training data (``data``): a ``module:function`` source (:mod:`native_mm.sources`; its
``train`` split, whole images resized; ``heldout`` validates), ``photos``
(scikit-learn's ``load_sample_images``: random scales and crops), a folder of images, or
a documents JSONL (its image segments). Training crop policy for folders/JSONL: the
image is converted to RGB, its shorter side resized to ``resolution`` and a random
``resolution`` square cropped (centre crop for validation). Every file is decoded once
before training; the ones :func:`open_image` refuses and the JSONL records the validator
refuses are skipped and counted in ``OUT/data_report.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from native_mm import cli_help, sources
from native_mm.inputs import is_foreign, media_documents
from native_mm.io import save_image
from native_mm.tokenizers.image import (
    _RESAMPLE,
    ImageConfig,
    ImageTokenizer,
    open_image,
    pil_to_tensor,
    tensor_to_pil,
    to_rgb,
)
from native_mm.tokenizers.image_metrics import PatchDiscriminator, PerceptualLoss, psnr
from native_mm.tokenizers.trainer import (
    DataReport,
    TrainerSpec,
    fit_tokenizer,
    load_spec,
    make_train_loader,
    write_data_report,
)
from native_mm.tokenizers.vqgan import VQGAN

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclasses.dataclass
class ImageTrainSpec:
    """A VQ-GAN training spec (``tokenizers/image/*.yaml``)."""

    model: ImageConfig = dataclasses.field(default_factory=ImageConfig)  # the tokenizer
    trainer: TrainerSpec = dataclasses.field(default_factory=TrainerSpec)  # Lightning knobs
    data: str = "photos"  # a "module:function" source, "photos", an image folder, a .jsonl,
    # or a .tar / .parquet / datasets folder (its images, captioned or not)
    val_data: str = ""  # same choices; "" = the source's heldout split / photo crops / none
    resolution: int = 32  # training crop side in pixels (a multiple of the factor)
    photo_scale: tuple[float, float] = (0.15, 1.0)  # photos: random downscale range
    photo_samples: int = 4096  # photos: random crops per epoch
    hflip: bool = True  # random horizontal flips (not for digits)
    batch_size: int = 32  # images per step
    num_workers: int = 0  # DataLoader workers
    lr: float = 2e-4  # generator Adam learning rate
    disc_lr: float = 2e-4  # discriminator Adam learning rate
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas for both optimisers
    warmup_steps: int = 100  # linear learning-rate warm-up (generator)
    l1_weight: float = 1.0  # L1 reconstruction weight
    l2_weight: float = 0.0  # L2 reconstruction weight
    perceptual_weight: float = 0.0  # >0 needs perceptual_weights
    perceptual_weights: str = ""  # local torchvision-layout VGG16 state dict (.pt)
    disc_weight: float = 0.1  # GAN loss weight (times the adaptive weight)
    disc_start: int = 1000  # generator step at which the GAN losses switch on
    disc_layers: int = 2  # PatchGAN stride-2 layers
    disc_channels: int = 32  # PatchGAN base width
    sample_every: int = 500  # steps between sample-grid PNGs (0 = only at the end)
    sample_count: int = 16  # images in the sample grid

    def __post_init__(self) -> None:
        self.photo_scale = tuple(float(v) for v in self.photo_scale)  # type: ignore[assignment]
        self.betas = tuple(float(v) for v in self.betas)  # type: ignore[assignment]
        if self.resolution % self.model.factor:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of factor {self.model.factor}"
            )
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights (a local file)")


# ---------------------------------------------------------------- data


class ResizedDataset(Dataset):
    """A fixed list of PIL images, RGB, resized to ``resolution`` like the tokenizer does
    (small images such as 8x8 digits are used whole, not cropped)."""

    def __init__(self, images: list[Image.Image], resolution: int, resample: str) -> None:
        self.images = images
        self.size, self.resample = resolution, _RESAMPLE[resample]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = to_rgb(self.images[i % len(self.images)])
        return pil_to_tensor(img.resize((self.size, self.size), self.resample))


class CropDataset(Dataset):
    """Random (train) or fixed (val) square crops of a list of images or image files.

    Each item picks an image, rescales it by a factor in ``scale`` (photos) or so that
    its shorter side equals ``resolution`` (files), and crops a ``resolution`` square.
    Training items draw from ``(seed, index)``: the same index gives the same crop, and
    :class:`~native_mm.tokenizers.trainer.ResumableBatchSampler` gives each epoch new
    indices (``epoch * len + i``), so a resumed run sees the crops an uninterrupted one
    would.
    """

    def __init__(
        self,
        sources: list[Any],
        resolution: int,
        length: int | None = None,
        scale: tuple[float, float] | None = None,
        train: bool = True,
        hflip: bool = False,
        max_pixels: int = 64_000_000,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("no training images found")
        self.sources, self.res, self.scale = sources, resolution, scale
        self.length, self.train, self.hflip = length or len(sources), train, hflip
        self.max_pixels, self.seed = max_pixels, seed

    def __len__(self) -> int:
        return self.length

    def _image(self, i: int) -> Image.Image:
        src = self.sources[i % len(self.sources)]
        if isinstance(src, Image.Image):
            return src
        return to_rgb(open_image(src, self.max_pixels), where=str(src))

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i] if self.train else i)
        img = self._image(int(rng.integers(len(self.sources))) if self.train else i)
        w, h = img.size
        s = self.res / min(w, h)
        if self.scale is not None:
            s = max(s, float(rng.uniform(*self.scale)))
        size = (max(self.res, round(w * s)), max(self.res, round(h * s)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.BICUBIC)
        if self.train:
            x0 = int(rng.integers(img.width - self.res + 1))
            y0 = int(rng.integers(img.height - self.res + 1))
        else:
            x0, y0 = (img.width - self.res) // 2, (img.height - self.res) // 2
        img = img.crop((x0, y0, x0 + self.res, y0 + self.res))
        if self.hflip and self.train and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)


def photo_images() -> list[Image.Image]:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg) as RGB PIL images."""
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def image_paths(source: str | Path, report: DataReport | None = None) -> list[Path]:
    """An image folder (recursive) or a documents JSONL -> image file paths.

    With ``report``, bad JSONL records are skipped and counted there; without, the first
    one raises :class:`native_mm.documents.DocumentError`.
    """
    source = Path(source)
    foreign = None
    if is_foreign(source):  # a tar, Parquet file or datasets folder: its media as documents
        source, foreign = media_documents(source)
    if source.suffix == ".jsonl":
        from native_mm.documents import SkipReport, read_documents

        skips = SkipReport()
        on_error = "skip" if report is not None else "raise"
        paths = [
            Path(seg.value)
            for doc in read_documents(source, on_error=on_error, report=skips)
            for seg in doc.segments
            if seg.kind == "image"
        ]
        if report is not None:
            report.add_invalid(skips)
            if foreign is not None:
                report.add_invalid(foreign)
        return paths
    if not source.is_dir():
        raise ValueError(
            f"{source}: not an image folder, a .jsonl file, a .tar/.parquet/datasets folder, "
            "'photos' or a 'module:function' source"
        )
    return sorted(
        p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def build_dataset(
    spec: ImageTrainSpec, source: str, train: bool, report: DataReport | None = None
) -> Dataset:
    """The dataset of ``source``; files are decoded once here and bad ones skipped and
    counted in ``report`` (a fresh one when None)."""
    res = spec.resolution
    report = report if report is not None else DataReport(source)
    if sources.is_ref(source):
        media = sources.load(source, "train" if train else "heldout").items
        ds: Dataset = ResizedDataset(media, res, spec.model.resample)
    elif source == "photos":
        length = spec.photo_samples if train else 64
        ds = CropDataset(photo_images(), res, length, spec.photo_scale, train, spec.hflip,
                         seed=spec.trainer.seed)  # fmt: skip
    else:
        paths = image_paths(source, report)
        if not paths and not report.skipped:
            raise ValueError(f"{source}: no images found")
        max_pixels = spec.model.max_pixels
        good = report.load(paths, lambda p: to_rgb(open_image(p, max_pixels), where=str(p)).size)
        report.check_nonempty("images")
        paths = [p for p, _ in good]
        return CropDataset(paths, res, None, None, train, spec.hflip, max_pixels, spec.trainer.seed)
    report.used = len(ds)
    return ds


# ---------------------------------------------------------------- Lightning module


class VQGANModule(L.LightningModule):
    """VQ-GAN training with two optimisers (manual optimisation).

    ``global_step`` counts generator steps only: the discriminator's optimiser is stepped
    directly (not through Lightning), so ``max_steps`` and ``disc_start`` mean generator
    steps whether or not the GAN is on.
    """

    def __init__(self, spec: ImageTrainSpec) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.spec = spec
        # the checkpoint carries the spec it was trained with (plain dict, YAML-able)
        self.save_hyperparameters({"spec": dataclasses.asdict(spec)})
        self.vqgan = VQGAN(spec.model)
        self.disc = PatchDiscriminator(spec.disc_layers, spec.disc_channels)
        self.perceptual = (
            PerceptualLoss(spec.perceptual_weights) if spec.perceptual_weight > 0 else None
        )

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        # the frozen VGG is rebuilt from its file; keep checkpoints small
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith("perceptual.")}

    def load_state_dict(self, state_dict: Any, strict: bool = True, **kw: Any) -> Any:
        return super().load_state_dict(state_dict, strict=False if self.perceptual else strict)

    def configure_optimizers(self) -> Any:
        s = self.spec
        opt_g = torch.optim.Adam(self.vqgan.parameters(), lr=s.lr, betas=s.betas)
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=s.disc_lr, betas=s.betas)
        return [opt_g, opt_d]

    def reconstruction_loss(self, x: torch.Tensor, xrec: torch.Tensor) -> torch.Tensor:
        s = self.spec
        loss = s.l1_weight * (x - xrec).abs().mean() + s.l2_weight * (x - xrec).pow(2).mean()
        if self.perceptual is not None:
            loss = loss + s.perceptual_weight * self.perceptual(xrec, x)
        return loss

    def adaptive_weight(self, rec: torch.Tensor, gan: torch.Tensor) -> torch.Tensor:
        """||d rec / d W_last|| / ||d gan / d W_last|| (Esser et al., 2021, eq. 7)."""
        last = self.vqgan.decoder.conv_out.weight
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(gan, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        s = self.spec
        opt_g, opt_d = self.optimizers()
        step = self.global_step
        for group in opt_g.optimizer.param_groups:  # linear warm-up
            group["lr"] = s.lr * min(1.0, (step + 1) / max(1, s.warmup_steps))
        x = batch
        xrec, q = self.vqgan(x)
        rec = self.reconstruction_loss(x, xrec)
        loss = rec + q.loss
        gan_on = step >= s.disc_start and s.disc_weight > 0
        logs = {"train/rec": rec.detach(), "train/quant": q.loss.detach()}
        if gan_on:
            g_adv = -self.disc(xrec).mean()
            weight = self.adaptive_weight(rec, g_adv) * s.disc_weight
            loss = loss + weight * g_adv
            logs.update({"train/g_adv": g_adv.detach(), "train/adaptive_w": weight})
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_g.step()
        if gan_on:
            real, fake = self.disc(x.detach()), self.disc(xrec.detach())
            d_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())  # hinge
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.optimizer.step()  # raw step: does not advance global_step
            logs["train/d_loss"] = d_loss.detach()
        with torch.no_grad():
            logs["train/psnr"] = psnr(x, xrec).mean()
            logs["train/used_codes"] = torch.tensor(float(q.indices.unique().numel()))
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=False, on_step=True)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        xrec, q = self.vqgan(batch)
        self.log("val/l1", (batch - xrec).abs().mean(), on_epoch=True)
        self.log("val/psnr", psnr(batch, xrec).mean(), on_epoch=True)


class SampleGrid(L.Callback):
    """Writes originals (odd rows) vs reconstructions (even rows) as a PNG grid.

    Every ``every`` steps to ``out/samples/step_XXXXXX.png`` and at the end of training
    to ``out/reconstructions.png``.
    """

    def __init__(self, images: torch.Tensor, out_dir: str | Path, every: int) -> None:
        self.images, self.out, self.every = images, Path(out_dir), every

    def grid(self, module: VQGANModule) -> Image.Image:
        was = module.training
        module.eval()
        with torch.no_grad():
            rec = module.vqgan(self.images.to(module.device))[0].clamp(-1, 1).cpu()
        module.train(was)
        return make_grid(self.images, rec)

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step > 0:
            path = self.out / "samples" / f"step_{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(path, self.grid(module))

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        save_image(self.out / "reconstructions.png", self.grid(module))


def make_grid(originals: torch.Tensor, recons: torch.Tensor, per_row: int = 8) -> Image.Image:
    """(B, 3, H, W) originals and reconstructions -> a PNG-ready grid, pairs of rows."""
    b, _, h, w = originals.shape
    per_row = min(per_row, b)
    rows = math.ceil(b / per_row)
    scale = max(1, 64 // max(h, w))  # tiny digits are shown enlarged (nearest)
    grid = Image.new("RGB", (per_row * w * scale, 2 * rows * h * scale), (255, 255, 255))
    for i in range(b):
        r, c = divmod(i, per_row)
        for k, t in enumerate((originals[i], recons[i])):
            img = tensor_to_pil(t)
            if scale > 1:
                img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
            grid.paste(img, (c * w * scale, (2 * r + k) * h * scale))
    return grid


# ---------------------------------------------------------------- CLI verbs


def train_main(argv: list[str] | None = None, prog: str = "native-mm tokenizer train image") -> int:
    """Train a VQ-GAN from a spec YAML and export the tokenizer into ``--out``."""
    ap = cli_help.parser(prog, train_main.__doc__)
    ap.add_argument("--config", required=True, help="spec YAML, e.g. tokenizers/image/digits.yaml")
    ap.add_argument("--out", required=True, help="output dir (tokenizer, log, PNGs, checkpoints)")
    ap.add_argument(
        "overrides", nargs="*", help="key=value spec overrides, e.g. trainer.max_steps=5"
    )
    args = ap.parse_args(argv)
    spec = load_spec(ImageTrainSpec, args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.trainer.num_threads:
        torch.set_num_threads(spec.trainer.num_threads)
    reports = {"train": DataReport(spec.data)}
    train_ds = build_dataset(spec, spec.data, train=True, report=reports["train"])
    own_val = spec.data == "photos" or sources.is_ref(spec.data)  # sources have a heldout split
    val_source = spec.val_data or (spec.data if own_val else "")
    val_ds = None
    if val_source:
        reports["val"] = DataReport(val_source)
        val_ds = build_dataset(spec, val_source, train=False, report=reports["val"])
    write_data_report(out, reports)
    loader = make_train_loader(
        train_ds, spec.batch_size, spec.trainer, drop_last=len(train_ds) >= spec.batch_size,
        num_workers=spec.num_workers,
    )  # fmt: skip
    val_loader = DataLoader(val_ds, 64, num_workers=0) if val_ds is not None else None
    sample_src = val_ds if val_ds is not None else train_ds
    n = min(spec.sample_count, len(sample_src))
    samples = torch.stack([sample_src[i] for i in range(n)])
    torch.manual_seed(spec.trainer.seed)  # the initial weights too: reproducible runs
    module = VQGANModule(spec)
    t0 = time.perf_counter()
    fit_tokenizer(
        module, loader, out, spec.trainer, val_loader,
        callbacks=[SampleGrid(samples, out, spec.sample_every)],
    )  # fmt: skip
    tok = ImageTokenizer(spec.model)
    tok.model.load_state_dict(module.vqgan.state_dict())
    tok.model.eval()
    tok.save(out)
    print(f"trained {spec.trainer.max_steps} steps in {time.perf_counter() - t0:.0f}s; "
          f"tokenizer saved to {out} (fingerprint {tok.fingerprint()[:12]})")  # fmt: skip
    return 0
