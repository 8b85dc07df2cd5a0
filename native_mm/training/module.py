"""LightningModule for the early-fusion LM: loss per modality, z-loss, schedule, MFU.

Loss. Next-token cross-entropy over the shared vocabulary (computed in fp32 from the
logits), averaged over the target tokens whose loss mask is set. Under data parallelism
the number of target tokens is summed over ranks first, so ``W`` processes give exactly
the loss (and gradients) of one process with the same global batch. Optional z-loss
(PaLM): ``z_loss * logsumexp(logits)^2`` on the same tokens. Optional per-modality weights
scale each target token's loss by the weight of its modality (``vocab.modality_table``).

Checkpoints carry ``vocab_manifest`` and the model config (``save_hyperparameters``);
resuming or loading with a different tokenizer set raises a :class:`VocabError` naming
both fingerprints.

Non-finite guard. A training step whose loss or gradients hold NaN/inf is skipped (no
parameter update), counted (``train/nonfinite_steps``) and logged; after more than
``max_nonfinite_steps`` of them the run stops with :class:`NonFiniteError`. A checkpoint is
never written from weights that are not finite.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from native_mm.checkpoint import WEIGHT_LAYOUT, init_weights
from native_mm.kernels import head_cross_entropy
from native_mm.model import ModelConfig, Transformer
from native_mm.vocab import MODALITIES, Vocab, VocabError, manifest_digest


class NonFiniteError(ValueError):
    """Training diverged: too many non-finite steps, or non-finite weights at a checkpoint."""


def _describe(manifest: dict | None) -> str:
    if not manifest:
        return "<none>"
    fps = ", ".join(f"{k}={v[:12]}" for k, v in sorted(manifest.get("fingerprints", {}).items()))
    return f"{manifest_digest(manifest)} ({fps or 'no fingerprints'})"


def check_vocab(stored: dict | None, current: dict | None, source: str) -> None:
    """Raise if a checkpoint's vocabulary manifest differs from the current one."""
    if stored is None or current is None:
        return
    if manifest_digest(stored) != manifest_digest(current):
        raise VocabError(
            f"{source}: the checkpoint was trained with tokenizer set {_describe(stored)} "
            f"but the current data/tokenizers are {_describe(current)}"
        )


def cosine_schedule(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LanguageModule(L.LightningModule):
    """Next-token training of :class:`Transformer` over shard batches.

    Args:
        arch: model shape (``vocab_size`` is taken from ``vocab_manifest`` when given).
        vocab_manifest: the data's vocabulary manifest (linked from the DataModule).
        layout: the data's media layouts, ``Layout.to_dict()`` (linked from the DataModule;
            saved in checkpoints so generation uses the same layout; None = defaults).
        lr: peak learning rate.
        min_lr_ratio: final LR as a fraction of ``lr`` (cosine floor).
        warmup_steps: linear warm-up steps.
        decay_steps: steps of the cosine decay (0 = the trainer's max_steps).
        weight_decay: AdamW weight decay on matrices (not on norms).
        betas: AdamW betas.
        eps: AdamW epsilon.
        z_loss: z-loss coefficient (0 = off).
        modality_weights: per-modality loss weights by name (special/text/image/audio).
        peak_flops: peak FLOP/s of ONE device, for the MFU estimate.
        compile: ``torch.compile`` the transformer (in place: checkpoint keys unchanged).
        fused_adamw: use the fused AdamW kernel (CPU and CUDA; ~4x faster than foreach on
            this CPU for 34M parameters). Not with mixed precision + gradient clipping,
            which Lightning's AMP plugin refuses (foreach is used then).
        max_nonfinite_steps: steps with a non-finite loss or gradient that are skipped
            before the run stops with :class:`NonFiniteError`.
        code_vectors: ``code_vectors.npz`` of the tokenizer set (written beside its
            manifest): image/audio code embeddings start from the codes' latent vectors
            (:func:`init_code_embeddings`); None = plain random init.
        init_from: a checkpoint (``fit``'s ``.ckpt``) or a model directory (``export``)
            whose weights start this run: a new stage (fresh optimiser, schedule and step
            count; any batch size, data and sequence length). Its vocabulary must be the
            data's. ``--ckpt_path`` instead resumes a run, weights and all.
    """

    def __init__(
        self,
        arch: ModelConfig | None = None,
        vocab_manifest: dict | None = None,
        layout: dict | None = None,
        lr: float = 3e-4,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        decay_steps: int = 0,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        z_loss: float = 0.0,
        modality_weights: dict[str, float] | None = None,
        peak_flops: float = 1e12,
        compile: bool = False,
        fused_adamw: bool = True,
        max_nonfinite_steps: int = 10,
        code_vectors: str | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        arch = arch if arch is not None else ModelConfig()
        if isinstance(arch, dict):
            arch = ModelConfig.from_dict(arch)
        if vocab_manifest is not None:
            vocab = Vocab.from_manifest(vocab_manifest, "vocab_manifest")
            arch = ModelConfig.from_dict({**arch.to_dict(), "vocab_size": vocab.size})
            table = torch.from_numpy(vocab.modality_table().astype("int64"))
        else:
            table = torch.zeros(arch.vocab_size, dtype=torch.long)
        self.config = arch
        unknown = set(modality_weights or {}) - set(MODALITIES)
        if unknown:
            raise ValueError(f"model.modality_weights: unknown modalities {sorted(unknown)}")
        weights = torch.tensor([(modality_weights or {}).get(m, 1.0) for m in MODALITIES])
        self.register_buffer("modality_table", table, persistent=False)
        self.register_buffer("modality_weight", weights.float(), persistent=False)
        self.save_hyperparameters(ignore=["arch"])
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load weights_only
        self.model: Transformer | None = None
        self._t_last: float | None = None
        self.nonfinite_steps = 0  # skipped steps so far (saved in checkpoints)

    # ---- model -----------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the transformer (under the strategy's init context, e.g. FSDP's)."""
        if self.model is None:
            self.model = Transformer(self.config)
            if self.hparams.get("init_from"):  # a resumed run then loads its own weights
                steps = init_weights(self.model, self.hparams.init_from,
                                     self.hparams.vocab_manifest)  # fmt: skip
                rank_zero_info(f"native-mm fit: weights from {self.hparams.init_from} "
                               f"({steps} steps); a new stage starts at step 0")  # fmt: skip
            elif self.hparams.get("code_vectors"):
                init_code_embeddings(self.model, self.hparams.vocab_manifest,
                                     self.hparams.code_vectors)  # fmt: skip
            if self.hparams.compile:
                self.model.compile()  # forward
                self.model.hidden = torch.compile(self.model.hidden)  # the training loss's

    def on_fit_start(self) -> None:
        m, t = self.model, self.config.block_size
        rank_zero_info(
            f"model: {m.num_params() / 1e6:.2f}M parameters "
            f"({m.num_params(non_embedding=True) / 1e6:.2f}M non-embedding), "
            f"{m.flops_per_token(t) / 1e9:.3f} GFLOP/token (train, T={t}), "
            f"vocab {self.config.vocab_size} (padded {self.config.padded_vocab_size})"
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    # ---- loss ------------------------------------------------------------------------
    def _global_count(self, n: torch.Tensor) -> tuple[torch.Tensor, int]:
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            n = n.clone()
            torch.distributed.all_reduce(n)
        return n, world

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Masked next-token loss; logs loss/accuracy per target modality."""
        target, mask = batch["target"], batch["mask"].float()
        mod = self.modality_table[target]  # (B, T)
        w = self.modality_weight[mod] * mask
        n_local = mask.sum()
        n_global, world = self._global_count(n_local.detach())
        denom = n_global.clamp(min=1) / world  # DDP averages gradients over ranks
        loss, ce, correct = self._head_loss(batch["input"], target, w / denom,
                                            self.hparams.z_loss * mask / denom)  # fmt: skip
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite {stage} loss {loss.item()} at step {self.global_step} "
                "(lower the LR, enable z-loss or gradient clipping)"
            )
        with torch.no_grad():
            metrics = {f"{stage}/loss": (ce * mask).sum() / n_local.clamp(min=1)}
            for i, name in enumerate(MODALITIES):
                sel = mask * (mod == i).float()
                n = sel.sum()
                if n > 0:
                    metrics[f"{stage}/loss_{name}"] = (ce * sel).sum() / n
                    metrics[f"{stage}/acc_{name}"] = (correct * sel).sum() / n
            metrics[f"{stage}/acc"] = (correct * mask).sum() / n_local.clamp(min=1)
        on_step = stage == "train"
        # Under DDP the per-rank loss is rescaled; the synced mean is the global-batch loss.
        self.log(f"{stage}/loss_opt", loss.detach(), on_step=on_step, on_epoch=not on_step,
                 sync_dist=world > 1 or not on_step, prog_bar=True)  # fmt: skip
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        return loss

    def _head_loss(self, idx, target, w_ce, w_z):
        """Weighted loss ``sum(w_ce ce + w_z lse^2)``, per-token ce ``(B, T)`` and correct."""
        h = self.model.hidden(idx)  # (B, T, D)
        head = self.model.lm_head
        hooked = head is not None and bool(head._forward_hooks or head._forward_pre_hooks)
        if hooked or self.config.kernels == "plain":
            # the plain path, logits materialised (hooks on the output layer see them)
            logits = self.model.head(h).float()  # (B, T, V)
            lse = torch.logsumexp(logits, dim=-1)
            ce = lse - logits.gather(-1, target[..., None]).squeeze(-1)
            loss = (ce * w_ce).sum() + (lse.square() * w_z).sum()
            return loss, ce.detach(), (logits.detach().argmax(-1) == target).float()
        loss, ce, _, pred = head_cross_entropy(
            h.flatten(0, 1), self.model.head_weight, target.flatten(), w_ce.flatten(),
            w_z.flatten(),
        )  # fmt: skip
        return loss, ce.view_as(target), (pred.view_as(target) == target).float()

    def _skip_nonfinite(self, what: str) -> None:
        """Count a skipped step; stop the run once there were too many."""
        self.nonfinite_steps += 1
        limit = self.hparams.get("max_nonfinite_steps", 10)
        rank_zero_info(
            f"step {self.global_step}: {what}; step skipped "
            f"({self.nonfinite_steps} non-finite steps, limit {limit})"
        )
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True)
        if self.nonfinite_steps > limit:
            raise NonFiniteError(
                f"training stopped at step {self.global_step}: {self.nonfinite_steps} steps "
                f"had a non-finite loss or gradient (model.max_nonfinite_steps={limit}); "
                "lower the LR, enable z-loss or gradient clipping, or resume from the last "
                "checkpoint"
            )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        try:
            loss = self.compute_loss(batch, "train")
        except FloatingPointError as e:
            self._skip_nonfinite(str(e))
            return None  # Lightning skips backward and the optimizer update
        now = time.perf_counter()
        if self._t_last is not None:
            dt = now - self._t_last
            tokens = batch["input"].numel() * self.trainer.world_size
            tps = tokens / dt
            flops = self.model.flops_per_token(batch["input"].shape[1]) * tps
            self.log("perf/tokens_per_s", tps, on_step=True, prog_bar=True)
            self.log("perf/mfu", flops / (self.hparams.peak_flops * self.trainer.world_size))
        self._t_last = now
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.compute_loss(batch, "val")

    # ---- optimisation ----------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update (drop every gradient) when any gradient is NaN/inf."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads and not all(torch.isfinite(g).all() for g in grads):
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves params without grads alone
            self._skip_nonfinite("non-finite gradient")

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        hp = self.hparams
        fused = hp.get("fused_adamw", True)
        t = self._trainer
        if fused and t is not None and "mixed" in str(t.precision) and t.gradient_clip_val:
            fused = False  # Lightning's AMP plugin refuses to clip grads of fused optimizers
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
            betas=tuple(hp.betas),
            eps=hp.eps,
            fused=fused or None,
        )
        total = hp.decay_steps or max(1, self.trainer.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_schedule(s, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items()
               if v.is_floating_point() and not torch.isfinite(v).all()]  # fmt: skip
        if bad:
            raise NonFiniteError(
                f"refusing to write a checkpoint at step {self.global_step}: non-finite "
                f"weights in {bad[:3]}{' ...' if len(bad) > 3 else ''}"
            )
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        checkpoint["model_config"] = self.config.to_dict()
        checkpoint["vocab_manifest"] = self.hparams.vocab_manifest
        checkpoint["layout"] = self.hparams.get("layout")
        checkpoint["weight_layout"] = WEIGHT_LAYOUT
        # LightningCLI applies the DataModule links in a per-process order: sort, so the
        # same run writes the same bytes (equal dicts can pickle differently)
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            checkpoint["hyper_parameters"] = dict(sorted(hp.items()))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))
        stored = checkpoint.get("vocab_manifest")
        check_vocab(stored, self.hparams.vocab_manifest, "checkpoint")
        if checkpoint.get("weight_layout") != WEIGHT_LAYOUT:
            raise ValueError(
                "checkpoint: written before Linear weights took PyTorch's (out, in) layout; "
                "its optimizer state cannot resume here (load it for inference, or start anew)"
            )
        stored_cfg = checkpoint.get("model_config")
        if stored_cfg is not None:
            # kernels picks an implementation, not a shape: a run may resume with the other
            stored = ModelConfig.from_dict(stored_cfg, "checkpoint").to_dict()
            now = self.config.to_dict()
            diff = {k: (stored[k], v) for k, v in now.items() if stored[k] != v and k != "kernels"}
            if diff:
                raise ValueError(f"checkpoint: model config differs from the current one {diff}")


def init_code_embeddings(
    model: Transformer, vocab_manifest: dict | None, path: str, seed: int = 0
) -> dict[str, int]:
    """Start the embedding rows of image/audio codes from the tokenizers' code vectors.

    Each modality's ``d``-dim vectors (``(levels, K, d)`` in ``path``) go through one fixed
    random projection to the model width (seeded: every rank gets the same), are centred and
    scaled to ``init_std``: codes that decode alike start close together, so the LM reads
    them as points of the tokenizer's latent space rather than unrelated symbols.

    Returns:
        ``{modality: rows initialised}``.
    """
    import numpy as np

    if vocab_manifest is None:
        raise VocabError(f"{path}: code vectors need the data's vocabulary manifest")
    try:
        data = dict(np.load(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such code vectors file") from None
    except Exception as e:
        raise ValueError(f"{path}: cannot read code vectors ({type(e).__name__}: {e})") from None
    digest = str(data.pop("manifest_digest", ""))
    if digest != manifest_digest(vocab_manifest):
        raise VocabError(
            f"{path}: code vectors of tokenizer set {digest or '<none>'}, but the data uses "
            f"{_describe(vocab_manifest)}"
        )
    vocab = Vocab.from_manifest(vocab_manifest, "vocab_manifest")
    gen = torch.Generator().manual_seed(seed)
    weight, done = model.wte.weight, {}
    for modality, vectors in sorted(data.items()):
        levels, k, d = vectors.shape
        starts = [vocab.ranges["image"].start] if modality == "image" else [
            vocab.audio_range(q).start for q in range(min(levels, vocab.audio_levels))
        ]  # fmt: skip
        size = vocab.image_codes if modality == "image" else vocab.audio_codes
        if k != size:
            raise VocabError(f"{path}: {modality} has {k} codes, the vocabulary {size}")
        proj = torch.randn(d, weight.shape[1], generator=gen)  # one space for all levels
        with torch.no_grad():
            for level, start in enumerate(starts):
                e = torch.from_numpy(vectors[level]).float() @ proj  # (K, D)
                e = e - e.mean(0)
                weight[start : start + k] = e * (model.config.init_std / e.std().clamp(min=1e-8))
        done[modality] = k * len(starts)
    return done
