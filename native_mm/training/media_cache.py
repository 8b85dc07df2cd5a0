"""A per-process cache of media codes for ``native-mm tokenize``: each file encoded once."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class MediaCache:
    """The codes of media files this process has encoded, keyed by path, size and mtime.

    Corpora reuse one file in many documents (the digits corpus: each spoken clip in ~11),
    so each is encoded once per worker; :meth:`prefill` encodes a job's images in batches.
    Holds at most ``max_items`` files (then starts afresh). Text is never cached.
    """

    def __init__(self, tokenizers: Any, max_items: int = 200_000, batch: int = 256) -> None:
        self.tokenizers, self.max_items, self.batch = tokenizers, max_items, batch
        self.codes: dict[tuple, np.ndarray] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _key(kind: str, path: str) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # the tokenizer's own encode raises the error that names the file
        return (kind, path, st.st_size, st.st_mtime_ns)

    def _store(self, key: tuple, codes: np.ndarray) -> None:
        if len(self.codes) >= self.max_items:
            self.codes.clear()
        self.codes[key] = codes

    def __call__(self, kind: str, path: str) -> np.ndarray | None:
        """Codes of ``path`` (encoding it on a miss), or None for text / unreadable paths."""
        key = None if kind == "text" else self._key(kind, path)
        if key is None:
            return None
        codes = self.codes.get(key)
        if codes is None:
            self.misses += 1
            codes = self.tokenizers[kind].encode(path)
            self._store(key, codes)
        else:
            self.hits += 1
        return codes

    def prefill(self, docs: list) -> None:
        """Encode the not-yet-cached media of ``docs`` in batches where the tokenizer can."""
        for kind, tok in self.tokenizers.items():
            batch_encode = getattr(tok, "encode_batch", None)
            if kind == "text" or batch_encode is None:
                continue
            todo = {}
            for doc in docs:
                for seg in doc.segments:
                    key = self._key(kind, seg.value) if seg.kind == kind else None
                    if key is not None and key not in self.codes:
                        todo[key] = seg.value
            keys = list(todo)
            for i in range(0, len(keys), self.batch):
                chunk = keys[i : i + self.batch]
                try:
                    codes = batch_encode([todo[k] for k in chunk])
                except (ValueError, OSError):
                    continue  # a bad file: per-document encoding names it and skips the doc
                for key, c in zip(chunk, codes, strict=True):
                    self._store(key, c)
