"""Known, harmless third-party chatter, silenced at its source for the command line.

``native-mm`` calls :func:`install` before a verb runs (``native-mm --verbose VERB`` or
``NATIVE_MM_VERBOSE=1`` skips it); the library itself never changes global warning or
logging state, so a notebook sees everything unless it calls :func:`install` too. Each
entry names one message and why it is safe to drop; anything else still prints, so a new
warning is seen (``tests/test_quiet.py`` runs the smoke job and fails on one it does not
know).
"""

from __future__ import annotations

import logging
import os
import warnings

# (message regex, category, why it is harmless)
WARNINGS: list[tuple[str, type[Warning], str]] = [
    (r"`torch\.nn\.utils\.weight_norm` is deprecated", FutureWarning,
     "encodec's SEANet uses the old weight_norm; same maths, removal not before torch 3"),
    (r".*isinstance\(treespec, LeafSpec\)", Warning,
     "Lightning's own use of a deprecated torch pytree API"),
    (r"Using ModelCheckpoint with manual optimization", Warning,
     "the tokenizers' GAN steps save the state after the optimiser step, as intended"),
    (r".*your dataloader is not resumable", Warning,
     "our batch sampler resumes at the exact batch (tests: bit-identical resume)"),
    (r"Total length of .* across ranks is zero", Warning,
     "a CSV logger flush on an empty step list; nothing is lost"),
    (r"Checkpoint directory .* exists and is not empty", Warning,
     "a resumed run writes into its own checkpoint directory on purpose"),
    (r".*args parameter is intended", Warning, "LightningCLI's internal args note"),
    (r".*does not have many workers which may be a bottleneck", Warning,
     "num_workers=0 is chosen on purpose on a 2-core machine"),
    (r"The number of training batches .* is smaller than the logging interval", Warning,
     "tiny smoke runs log less often than they step"),
]  # fmt: skip

# Lightning info lines that say nothing to a user of this project (logger, message start)
INFO_LINES = (
    "💡 Tip:",  # advertises a cloud logger
    "GPU available: False",  # a CPU machine; a GPU one still prints its line
    "TPU available: False",
    "HPU available: False",
    "Seed set to",
)


class _DropKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(start) for start in INFO_LINES)


_DROP = _DropKnown()


def verbose() -> bool:
    return os.environ.get("NATIVE_MM_VERBOSE", "") not in ("", "0")


def install() -> None:
    """Drop the known messages (warnings filters + a filter on Lightning's loggers)."""
    for pattern, category, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed",
                 "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
                 "lightning.pytorch.trainer.setup"):  # fmt: skip
        logging.getLogger(name).addFilter(_DROP)  # the same object: added once
    # spawned worker processes (tokenize --workers) inherit the warnings through the env
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:torch.nn.utils.weight_norm")
