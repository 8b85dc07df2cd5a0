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

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from native_mm import sources
from native_mm.io import load_torch, save_image, write_json
from native_mm.tokenizers.base import MediaError
from native_mm.tokenizers.image import (
    _RESAMPLE,
    VQGAN,
    ImageConfig,
    ImageTokenizer,
    open_image,
    pil_to_tensor,
    tensor_to_pil,
    to_rgb,
)
from native_mm.tokenizers.trainer import (
    DataReport,
    TrainerSpec,
    fit_tokenizer,
    load_spec,
    make_train_loader,
    write_data_report,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclasses.dataclass
class ImageTrainSpec:
    """A VQ-GAN training spec (``tokenizers/image/*.yaml``)."""

    model: ImageConfig = dataclasses.field(default_factory=ImageConfig)  # the tokenizer
    trainer: TrainerSpec = dataclasses.field(default_factory=TrainerSpec)  # Lightning knobs
    data: str = "photos"  # a "module:function" source, "photos", an image folder or a .jsonl
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
        return paths
    if not source.is_dir():
        raise ValueError(
            f"{source}: not an image folder, a .jsonl file, 'photos' or a 'module:function' source"
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


def evaluate(tok: ImageTokenizer, data: sources.LabeledMedia) -> dict:
    """Reconstruction metrics of ``tok`` over images (paths or PIL).

    PSNR/SSIM compare the decoded image with the tokenizer's own preprocessed input
    (same size); labelled data with a judge also reports the judge's accuracy on the
    originals and on the reconstructions (PIL images).
    """
    media = data.items
    psnrs, ssims, codes, recons = [], [], [], []
    t0 = time.perf_counter()
    xs = [tok.prepare(m) for m in media]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    order = [i for idx in by_shape.values() for i in idx]
    bs = tok.config.batch_size
    for idx in by_shape.values():  # same-size images share a forward pass
        for s in range(0, len(idx), bs):
            x = torch.stack([xs[i] for i in idx[s : s + bs]])
            c = tok.encode_tensor(x)
            rec = tok.decode_tensor(c)
            psnrs += psnr(x, rec).tolist()
            ssims += ssim(x, rec).tolist()
            codes += list(c)
            recons += list(rec)
    # back to the input order (the judge pairs reconstructions with labels)
    recons = [r for _, r in sorted(zip(order, recons, strict=True), key=lambda t: t[0])]
    out: dict[str, Any] = {
        "n_images": len(media),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "tokens_per_image": float(np.mean([c.size for c in codes])),
        "codebook_size": tok.codebook_size,
        **codebook_stats(codes, tok.codebook_size),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if data.labels is not None and data.judge is not None:
        originals = [m if isinstance(m, Image.Image) else open_image(m) for m in media]
        acc_o = data.judge(originals, data.labels)
        acc_r = data.judge([tensor_to_pil(r) for r in recons], data.labels)
        out.update(
            judge_accuracy_original=acc_o,
            judge_accuracy_reconstructed=acc_r,
            accuracy_retention=acc_r / acc_o,
        )
    return out


# ---------------------------------------------------------------- CLI verbs


def train_main(argv: list[str] | None = None, prog: str = "native-mm tokenizer train image") -> int:
    """Train a VQ-GAN from a spec YAML and export the tokenizer into ``--out``."""
    ap = argparse.ArgumentParser(prog=prog, description=train_main.__doc__)
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


def eval_main(argv: list[str] | None = None, prog: str = "native-mm tokenizer eval image") -> int:
    """Reconstruction metrics (PSNR, SSIM, codebook usage, perplexity) as JSON."""
    ap = argparse.ArgumentParser(prog=prog, description=eval_main.__doc__)
    ap.add_argument("--tokenizer", required=True, help="directory written by `train image`")
    ap.add_argument(
        "--data", required=True,
        help="a 'module:function' source (its held-out split, judged when it has labels; "
        "e.g. native_mm.apps.digits.sources:digit_images), 'photos', an image folder or a .jsonl",
    )  # fmt: skip
    ap.add_argument("--out", required=True, help="metrics JSON path")
    ap.add_argument("--limit", type=int, default=0, help="evaluate at most this many images")
    ap.add_argument("--grid", default="", help="also write a reconstructions PNG here")
    args = ap.parse_args(argv)
    tok = ImageTokenizer.load(args.tokenizer)
    if sources.is_ref(args.data):
        data = sources.load(args.data, "heldout")
    elif args.data == "photos":
        data = sources.LabeledMedia(photo_images())
    else:
        data = sources.LabeledMedia([str(p) for p in image_paths(args.data)])
    data = data.head(args.limit)
    media = data.items
    if not media:
        raise MediaError(f"{args.data}: no images to evaluate")
    metrics = {"tokenizer": str(args.tokenizer), "data": args.data, **evaluate(tok, data)}
    write_json(args.out, metrics)
    if args.grid:
        xs = [tok.prepare(m) for m in media[:16]]
        if len({tuple(x.shape) for x in xs}) == 1:
            x = torch.stack(xs)
            save_image(args.grid, make_grid(x, tok.decode_tensor(tok.encode_tensor(x))))
    print(json.dumps(metrics, indent=2))
    return 0
