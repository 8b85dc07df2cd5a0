"""Test doubles of the Tokenizer interface: media *are* their codes (for codec tests).

Media may be given as an array or as a path to a ``.npy`` file holding it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from native_mm.io import write_json
from native_mm.tokenizers.base import Tokenizer


class _Double(Tokenizer):
    ndim = 1

    def __init__(self, size: int, levels: int = 1) -> None:
        self.size, self.levels = size, levels

    @property
    def codebook_size(self) -> int:
        return self.size

    @property
    def n_levels(self) -> int:
        return self.levels

    def encode(self, media):
        codes = np.load(media) if isinstance(media, (str, Path)) else np.asarray(media)
        assert codes.ndim == self.ndim
        return codes.astype(np.int64)

    def decode(self, codes):
        return np.asarray(codes)

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{type(self).__name__}{self.size}/{self.levels}".encode()
        ).hexdigest()

    def save(self, directory):
        write_json(Path(directory) / "double.json", {"size": self.size, "levels": self.levels})

    @classmethod
    def load(cls, directory):
        raise NotImplementedError


class BytesText(_Double):
    """UTF-8 bytes as text codes."""

    modality = "text"

    def __init__(self) -> None:
        super().__init__(256)

    def encode(self, media: str):
        return np.frombuffer(media.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, codes) -> str:
        return bytes(np.asarray(codes, dtype=np.uint8).tolist()).decode("utf-8")


class GridImage(_Double):
    modality = "image"
    ndim = 2


class CodeAudio(_Double):
    modality = "audio"
    ndim = 2
