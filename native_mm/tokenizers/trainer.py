"""Lightning glue shared by the trainable tokenizers (image VQ-GAN, audio EnCodec).

A spec YAML (``tokenizers/<modality>/*.yaml``) fills a modality's spec dataclass;
:func:`fit_tokenizer` runs Lightning's Trainer on the modality's LightningModule with
checkpoints under ``out_dir/checkpoints`` and resumes from ``last.ckpt`` when present.
Each run (first or resumed) logs to its own ``out_dir/logs/version_N``; the runs' metrics
are merged into ``out_dir/train_log.csv`` so a resumed run keeps the whole history.

Exact resume. Lightning restarts a plain DataLoader from the beginning of its epoch and
does not save random-number state, so a resumed run would see other batches and other
random draws than the uninterrupted one. :func:`make_train_loader` batches through a
:class:`ResumableBatchSampler` (the order depends only on the seed and on how many steps
were trained), and :func:`fit_tokenizer` stores torch's and Python's global RNG states
in every checkpoint and restores them on resume: a run killed and resumed from
``last.ckpt`` ends with the same weights, bit for bit, as one never interrupted
(single device, ``num_workers=0`` or workers that draw only from the item index).

Training media from a folder or a documents JSONL are read once before training through
the tokenizers' own readers; a file they refuse (corrupt, empty, a decompression bomb,
NaN samples, too long, ...) and a record the document validator refuses are skipped,
counted by reason and listed in ``out_dir/data_report.json`` (:class:`DataReport`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from native_mm.io import read_yaml, write_json
from native_mm.tokenizers.base import MediaError

T = TypeVar("T")


@dataclasses.dataclass
class TrainerSpec:
    """The Lightning Trainer knobs every tokenizer spec shares."""

    max_steps: int = 1000  # optimiser steps
    precision: str = "32-true"  # "bf16-mixed" on GPU; fp32 on this CPU (no bf16 units)
    accelerator: str = "auto"
    devices: int | str = 1
    checkpoint_every: int = 500  # steps between checkpoints (last.ckpt is kept)
    log_every: int = 25  # steps between logged metrics
    val_every: int = 0  # steps between validation passes (0 = only at the end)
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads (0 = torch's default)
    logger: str = "csv"  # "csv" or "wandb" (offline unless WANDB_MODE says otherwise)


def load_spec(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Read a YAML spec into dataclass ``cls``; ``overrides`` are ``a.b=value`` strings.

    Nested dataclass fields (e.g. ``trainer: TrainerSpec``) are built recursively, and
    unknown keys are an error naming the file and the key.
    """
    path = Path(path)
    raw = read_yaml(path, what="spec file")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return _build(cls, raw, str(path))


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in raw.items():
        default = fields[name].default_factory  # type: ignore[misc]
        if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
            value = _build(default, value, f"{where}:{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


class DataReport:
    """What one tokenizer-training data source gave: files used, and every file or record
    skipped with its reason (validator reasons for JSONL records, the error class for
    media: ``MediaError``, ``MediaTooLong``). Counts are exact; messages name the file."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.used = 0
        self.counts: collections.Counter = collections.Counter()
        self.records: list[dict] = []

    def add_invalid(self, report: Any) -> None:
        """Records a :class:`native_mm.documents.SkipReport` refused in a JSONL source."""
        self.counts.update(report.counts)
        self.records += [
            {"source": src, "reason": "invalid_record", "validator_reason": why, "message": msg}
            for (src, msg), why in zip(report.messages, report.reasons, strict=True)
        ]

    def load(self, paths: Iterable[Path], read: Callable[[Path], Any]) -> list[tuple[Path, Any]]:
        """``read`` every file; a :class:`MediaError` is a counted skip. -> [(path, item)]."""
        kept = []
        for path in paths:
            try:
                kept.append((path, read(path)))
            except MediaError as e:
                reason = type(e).__name__
                self.counts[reason] += 1
                self.records.append({"file": str(path), "reason": reason, "message": str(e)})
        self.used += len(kept)
        return kept

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"source": self.source, "used": self.used, "skipped": self.skipped,
                "reasons": dict(sorted(self.counts.items())), "records": self.records}  # fmt: skip

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"{self.source}: {self.used} used, {self.skipped} skipped" + (
            f" ({reasons})" if reasons else ""
        )

    def check_nonempty(self, what: str) -> None:
        if not self.used:
            first = f"; first: {self.records[0]['message']}" if self.records else ""
            raise ValueError(f"{self.source}: no usable {what} ({self.summary()}){first}")


def write_data_report(out_dir: str | Path, reports: dict[str, DataReport]) -> Path:
    """``out_dir/data_report.json`` (split -> report); one summary line per split on stderr."""
    path = Path(out_dir) / "data_report.json"
    write_json(path, {split: r.as_dict() for split, r in reports.items()})
    for split, r in reports.items():
        print(f"{split} data {r.summary()} -> {path}", file=sys.stderr)
    return path


class ResumableBatchSampler:
    """Index batches whose order depends only on ``seed`` and the step reached.

    Epoch ``e`` is a permutation of ``range(n)`` drawn from ``seed + e`` (the identity
    without ``shuffle``); its index ``i`` is yielded as ``e * n + i`` so that datasets
    drawing augmentations from the index get new ones each epoch (they take ``i % n``
    to pick an item). With ``trainer`` set, iteration starts at batch
    ``trainer.global_step`` (one optimiser step per batch), which is what lets a resumed
    run continue exactly where its checkpoint was written.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool = True, drop_last: bool = True, seed: int = 0
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed = seed
        self.trainer: Any = None  # set by fit_tokenizer

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Any:
        import torch

        per_epoch = len(self)
        if per_epoch == 0:
            return
        start = int(self.trainer.global_step) if self.trainer is not None else 0
        epoch, first = divmod(start, per_epoch)
        if self.shuffle:
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
        else:
            order = torch.arange(self.n)
        b = self.batch_size
        for j in range(first, per_epoch):
            yield [epoch * self.n + int(i) for i in order[j * b : (j + 1) * b]]


def make_train_loader(
    dataset: Any, batch_size: int, spec: TrainerSpec, drop_last: bool = True,
    num_workers: int = 0,
) -> Any:  # fmt: skip
    """The training DataLoader of a tokenizer: shuffled, resumable on one device.

    With several devices Lightning shards a plain shuffled loader itself (and a resumed
    run then restarts its epoch), so that case keeps ``shuffle=True``.
    """
    import torch
    from torch.utils.data import DataLoader

    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    if spec.devices not in (1, "1"):
        return DataLoader(dataset, batch_size, shuffle=True, drop_last=drop_last, **common)
    sampler = ResumableBatchSampler(len(dataset), batch_size, True, drop_last, spec.seed)
    # its own generator: the workers' base seed must not draw from the global RNG, whose
    # state is saved in the checkpoints
    gen = torch.Generator().manual_seed(spec.seed)
    return DataLoader(dataset, batch_sampler=sampler, generator=gen, **common)


def fit_tokenizer(
    module: Any,
    train_loader: Any,
    out_dir: str | Path,
    spec: TrainerSpec,
    val_loader: Any = None,
    callbacks: list | None = None,
) -> Any:
    """Fit ``module`` with Lightning, checkpointing to ``out_dir/checkpoints``.

    Resumes from ``out_dir/checkpoints/last.ckpt`` if it exists (its checksum is verified
    first: a corrupted file is a ValueError naming it). Returns the Trainer.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from native_mm.training.checkpoint_io import ChecksummedCheckpointIO

    out_dir = Path(out_dir)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    L.seed_everything(spec.seed, workers=True, verbose=False)
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=spec.checkpoint_every
    )
    if spec.logger == "wandb":
        from native_mm.extras import require

        require("wandb", "wandb", "trainer.logger: wandb", "log to csv")
        logger = WandbLogger(save_dir=str(out_dir), project="native-mm", offline=True)
    else:
        # version=None: a resumed run gets a new folder (a fixed version would delete the
        # earlier run's metrics.csv); merge_logs() stitches them together afterwards.
        logger = CSVLogger(save_dir=str(out_dir), name="logs")

    class RNGState(L.Callback):
        """torch's and Python's global RNG states in every checkpoint, restored on resume
        (quantizer dropout, dead-code re-seeding and the GAN draw from them)."""

        def state_dict(self) -> dict:
            return {"torch": torch.get_rng_state(), "python": random.getstate()}

        def load_state_dict(self, state: dict) -> None:
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])

    trainer = L.Trainer(
        max_steps=spec.max_steps,
        precision=spec.precision,
        accelerator=spec.accelerator,
        devices=spec.devices,
        logger=logger,
        callbacks=[checkpoint, RNGState(), *(callbacks or [])],
        log_every_n_steps=spec.log_every,
        val_check_interval=spec.val_every or None,
        check_val_every_n_epoch=None if spec.val_every else 1,
        limit_val_batches=None if val_loader is not None else 0,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),  # a bar in a terminal, not in logs
        default_root_dir=str(out_dir),
        plugins=[ChecksummedCheckpointIO()],  # atomic .ckpt + sha256, verified on resume
    )
    sampler = getattr(train_loader, "batch_sampler", None)
    if isinstance(sampler, ResumableBatchSampler):
        sampler.trainer = trainer  # start where the checkpoint left off
    last = ckpt_dir / "last.ckpt"
    trainer.fit(
        module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        ckpt_path=str(last) if last.is_file() else None,
    )
    # every_n_train_steps does not fire on the final step: save it so a later resume with
    # a larger max_steps continues from the end, not from the last periodic checkpoint.
    trainer.save_checkpoint(str(last), weights_only=False)  # the full state: resumable
    merge_logs(out_dir)
    return trainer


def merge_logs(out_dir: str | Path) -> Path | None:
    """Concatenate ``logs/version_*/metrics.csv`` (in run order) into ``train_log.csv``."""
    out_dir = Path(out_dir)
    runs = sorted(
        (out_dir / "logs").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    rows, fields = [], []
    for path in runs:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields += [k for k in reader.fieldnames or [] if k not in fields]
            rows += list(reader)
    if not rows:
        return None
    from native_mm.io import atomic_write

    dest = out_dir / "train_log.csv"
    with atomic_write(dest, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dest
