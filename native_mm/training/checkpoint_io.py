"""Lightning's checkpoint plugin for native-mm runs: atomic ``.ckpt`` writes with a
sha256 beside them, verified ``weights_only`` loads, and the checksum removed with the file.

Kept apart from :mod:`native_mm.io` so that verbs which never train (validate, tokenize,
generate) do not import Lightning (~4 s).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from native_mm.io import load_torch, remove_checked, remove_temp_files, torch_bytes, write_checked


class ChecksummedCheckpointIO(TorchCheckpointIO):
    """Writes ``.ckpt`` files with :func:`~native_mm.io.write_checked`; loads them with
    :func:`~native_mm.io.load_torch` (checksum verified, ``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        # The checkpoint folder is the trainer's own: a killed write of any checkpoint
        # (step files get new names) left a temp file here that nothing else removes.
        remove_temp_files(Path(path).parent)
        write_checked(path, torch_bytes(checkpoint))

    def __init__(self, preloaded: tuple[Path, dict] | None = None) -> None:
        super().__init__()
        # ``fit --ckpt_path FILE``: the file FitCLI has already checked and loaded (on the
        # CPU), handed over once instead of read, hashed and unpickled a second time.
        self._preloaded = preloaded

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        if weights_only is False:  # Lightning's ``fit --weights_only false``
            print(f"{path}: --weights_only false is not honoured: native-mm unpickles "
                  "no objects (a pickle can run code); loading weights only",
                  file=sys.stderr)  # fmt: skip
        pre, self._preloaded = self._preloaded, None
        if pre and pre[0] == Path(path).resolve() and map_location in (None, "cpu"):
            return pre[1]
        return load_torch(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        remove_checked(path)
