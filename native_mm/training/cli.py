"""``native-mm fit``: LightningCLI over :class:`LanguageModule` + :class:`ShardDataModule`.

    native-mm fit --config recipes/cpu_small.yaml [--model.arch.n_layer 4 --data.batch_size 16
        --trainer.max_steps 100 --run.logger csv ...] [--ckpt_path last]

Every ``model.*``, ``data.*`` and ``trainer.*`` field of the recipe can be overridden on
the command line. ``run.*`` holds what the Trainer does not: output directory, logger
choice (CSV; wandb offline beside it with the ``wandb`` extra installed),
checkpoint cadence, CPU threads. ``model.vocab_manifest`` is linked from the data's
shard manifest, so the model's vocabulary always matches the data.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from native_mm.training.checkpoint_io import ChecksummedCheckpointIO
from native_mm.training.data import ShardDataModule
from native_mm.training.module import LanguageModule


def _vocab_manifest(data: ShardDataModule) -> dict:
    return data.vocab_manifest


def _layout(data: ShardDataModule) -> dict:
    return data.layout


class FitCLI(LightningCLI):
    """LightningCLI with run-level options (outputs, loggers, checkpoints, threads)."""

    _checked_ckpt: tuple | None = None  # (path, dict) of --ckpt_path, loaded and checked

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run.out_dir", type=str, default="runs/default",
                            help="directory for checkpoints and logs")  # fmt: skip
        parser.add_argument("--run.name", type=str, default="native-mm", help="run name")
        parser.add_argument("--run.logger", type=str, default="csv",
                            help="csv | wandb (offline + csv; wandb extra) | none")  # fmt: skip
        parser.add_argument("--run.checkpoint_every", type=int, default=500,
                            help="optimizer steps between checkpoints (last.ckpt)")  # fmt: skip
        parser.add_argument("--run.keep_checkpoints", type=int, default=1,
                            help="step checkpoints kept besides last.ckpt (-1 = all)")  # fmt: skip
        parser.add_argument("--run.csv_flush_every", type=int, default=50,
                            help="CSV logger flush interval in steps")  # fmt: skip
        parser.add_argument("--run.threads", type=int, default=0,
                            help="torch intra-op threads (0 = torch default)")  # fmt: skip
        parser.link_arguments(
            "data", "model.vocab_manifest", compute_fn=_vocab_manifest, apply_on="instantiate"
        )
        parser.link_arguments("data", "model.layout", compute_fn=_layout, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning loads ``--ckpt_path`` here, unchecked, and lets the hyper-parameters
        stored in it override the recipe (a stored ``code_vectors`` path made fit open it).
        Here the file is loaded like every checkpoint (checksum, ``weights_only``; a bad
        file is a one-line error naming it), and the recipe and command line win: stored
        values that differ are listed, not applied."""
        from native_mm.io import load_torch

        if not self.config.get("subcommand"):
            return
        cfg = self.config[self.config.subcommand]
        path = cfg.get("ckpt_path")
        if not path or not Path(path).is_file():
            return  # "last" and friends: Lightning finds the file, our plugin loads it
        ckpt = load_torch(path)  # ValueError naming the file (cli.main prints one line)
        self._checked_ckpt = (Path(path).resolve(), ckpt)  # the plugin hands it to Lightning
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{path}: not a training checkpoint of `native-mm fit`")
        stored, model = ckpt.get("hyper_parameters") or {}, cfg.get("model") or {}
        for key, value in sorted(stored.items()):
            ours = model.get(key) if hasattr(model, "get") else None
            if key in model and ours != value and not hasattr(ours, "keys"):
                print(
                    f"native-mm fit: {path} was trained with model.{key}={value!r}; "
                    f"the recipe's {ours!r} is used",
                    file=sys.stderr,
                )

    def before_instantiate_classes(self) -> None:
        run = self.config[self.subcommand]["run"] if self.subcommand else self.config["run"]
        if run.threads:
            torch.set_num_threads(run.threads)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        run = cfg["run"]
        out = Path(run.out_dir)
        tcfg = cfg["trainer"]
        callbacks = [
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=run.checkpoint_every,
                save_top_k=run.keep_checkpoints,
                monitor="step",
                mode="max",
                save_last=True,
            )
        ]
        kwargs.setdefault("default_root_dir", str(out))
        if tcfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers(run, out)
        strategy = str(tcfg.get("strategy")) + type(tcfg.get("strategy")).__name__
        given = tcfg.get("plugins") or []
        given = list(given) if isinstance(given, (list, tuple)) else [given]
        own_io = [p for p in given if isinstance(p, CheckpointIO)]
        if own_io:  # the user's choice, said out loud: their plugin loads checkpoints
            name = type(own_io[0]).__name__
            print(f"native-mm fit: checkpoints load through {name}, not native-mm's checked "
                  "loader (checksums, weights_only)", file=sys.stderr)  # fmt: skip
        elif "fsdp" not in strategy.lower():
            # atomic writes, a sha256 beside each .ckpt, verified weights_only loads on resume;
            # kept whatever other plugins are given (they used to drop it)
            # hand the checked checkpoint over and keep no reference (it may be large)
            checked, self._checked_ckpt = self._checked_ckpt, None
            kwargs["plugins"] = [*given, ChecksummedCheckpointIO(checked)]
        keys = self._parser(self.subcommand).callback_keys
        extra = [self._get(self.config_init, c) for c in keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(config, extra + callbacks)

    @staticmethod
    def _loggers(run: Any, out: Path) -> list | bool:
        if run.logger == "none":
            return False
        loggers: list = []
        if run.logger == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            from native_mm.extras import require

            require("wandb", "wandb", "run.logger: wandb", "log to csv")
            os.environ.setdefault("WANDB_MODE", "offline")
            offline = os.environ["WANDB_MODE"] != "online"
            loggers.append(
                WandbLogger(name=run.name, save_dir=str(out), project="native-mm", offline=offline)
            )
        elif run.logger != "csv":
            raise ValueError(f"run.logger must be wandb, csv or none, got {run.logger!r}")
        flush = run.csv_flush_every
        keep_previous_csv(out / "csv")
        loggers.append(CSVLogger(str(out), name="csv", version="", flush_logs_every_n_steps=flush))
        return loggers


def keep_previous_csv(log_dir: Path) -> Path | None:
    """Move an earlier run's ``metrics.csv`` to ``metrics.N.csv`` (N = 1, 2, ...).

    Lightning's CSV logger deletes the file it finds when a run starts, so a resumed fit
    would lose the rows of every step before the resume; rank 0 moves it aside instead.
    """
    from lightning.pytorch.utilities import rank_zero_only

    current = log_dir / "metrics.csv"
    if rank_zero_only.rank != 0 or not current.is_file():
        return None
    n = 1
    while (log_dir / f"metrics.{n}.csv").exists():
        n += 1
    return current.rename(log_dir / f"metrics.{n}.csv")


TRAINER_DEFAULTS = {
    "use_distributed_sampler": False,  # the DataModule shards global batches itself
}


def make_cli(argv: list[str], run: bool = True, cli_class: type = FitCLI) -> FitCLI:
    """Build (and with ``run`` execute) the CLI from ``argv`` (e.g. ``["fit", "--config", p]``)."""
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
    return cli_class(
        LanguageModule,
        ShardDataModule,
        args=argv,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"fit": {"default_env": False}},
    )


def main(argv: list[str] | None = None, prog: str = "native-mm fit") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    make_cli(["fit", *argv])
    return 0
