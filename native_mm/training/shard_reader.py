"""Reading packed token shards (written by :mod:`native_mm.training.shards`): documents
as ``(ids, loss)`` memmap slices, every read checked.

Checks, by cost. At open, always: the manifest's own checksum, every file present, file
sizes as the manifest says, the document offsets (``docs.npy``) going from 0 to the token
count and never falling; with ``verify="full"`` also every file's sha256. At every read,
always: the document's ids inside the vocabulary, its loss flags 0 or 1 and, for shards
written by ``tokenize`` (manifest ``framed``), its first and last ids ``<bos>`` and
``<eos>``. So a flipped byte is an error naming the shard file (and the document), at
open or at the first batch that reads it, except a flip in ``ids.bin`` or ``loss.bin``
that leaves a valid value inside a document (another token, the other flag): only
``full`` finds those, before training starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from native_mm.io import sha256_file
from native_mm.training.shards import FILES, ShardError, read_manifest, shard_paths
from native_mm.vocab import BOS, EOS, Vocab, VocabError


def _read_offsets(path: Path, documents: int, tokens: int) -> np.ndarray:
    """A shard's ``docs.npy``, checked: ``documents + 1`` integer offsets from 0 to
    ``tokens``, never falling (a flipped byte would otherwise send reads astray)."""
    try:
        off = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- numpy's header parser raises many kinds
        raise ShardError(f"{path}: corrupted shard index ({type(e).__name__}: {e})") from None
    problem = None
    if off.ndim != 1 or off.dtype.kind not in "iu":
        problem = f"expected 1-D integer offsets, got {off.dtype} {off.shape}"
    elif len(off) != documents + 1:
        problem = f"{len(off) - 1} documents, the manifest says {documents}"
    elif len(off) and (off[0] != 0 or off[-1] != tokens):
        problem = f"offsets run from {off[0]} to {off[-1]}, expected 0 to {tokens}"
    elif len(off) > 1 and (np.diff(off) < 0).any():
        bad = int(np.flatnonzero(np.diff(off) < 0)[0])
        problem = f"document {bad} has offsets {off[bad]} -> {off[bad + 1]} (falling)"
    if problem:
        raise ShardError(f"{path}: corrupted shard index: {problem}")
    return off


class ShardSet:
    """Read-only view of a shard directory: documents as ``(ids, loss)`` memmap slices.

    Args:
        path: the directory holding ``manifest.json``.
        verify: "full" checks every file's sha256 (default), "size" only file sizes,
            "none" nothing beyond the manifest's own checksum.
    """

    def __init__(self, path: str | Path, verify: str = "full") -> None:
        if verify not in ("full", "size", "none"):
            raise ValueError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        try:
            self.vocab = Vocab.from_manifest(self.manifest["vocab"], str(self.path))
        except VocabError as e:
            raise ShardError(f"{self.path / 'manifest.json'}: {e}") from None
        self.dtype = np.dtype(self.manifest["dtype"])
        self.framed = bool(self.manifest.get("framed"))  # documents are <bos> ... <eos>
        starts, shard_of, offsets = [], [], []
        for sh in self.manifest["shards"]:
            paths = shard_paths(self.path, sh["index"])
            for f in FILES:
                p = paths[f]
                if not p.is_file():
                    raise ShardError(f"{p}: shard file missing")
                if verify == "full" and sha256_file(p) != sh["files"][f]["sha256"]:
                    raise ShardError(f"{p}: corrupted shard (sha256 does not match the manifest)")
            for f, width in (("ids.bin", self.dtype.itemsize), ("loss.bin", 1)):
                size, want = paths[f].stat().st_size, sh["tokens"] * width
                if size != want:
                    raise ShardError(f"{paths[f]}: corrupted shard (wrong size: {size} bytes, "
                                     f"the manifest says {want})")  # fmt: skip
            offsets.append(_read_offsets(paths["docs.npy"], sh["documents"], sh["tokens"]))
            shard_of.append(np.full(sh["documents"], len(starts), dtype=np.int64))
            starts.append(sh["index"])
        self._shard_index = starts
        counts = [len(x) for x in shard_of]
        self._first_doc = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.doc_shard = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int64)
        self.doc_start = np.concatenate([o[:-1] for o in offsets]).astype(np.int64)
        self.doc_len = np.concatenate([np.diff(o) for o in offsets]).astype(np.int64)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.doc_len)

    @property
    def tokens(self) -> int:
        return int(self.manifest["tokens"])

    def _map(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._maps:
            paths = shard_paths(self.path, self._shard_index[k])
            ids = np.memmap(paths["ids.bin"], dtype=self.dtype, mode="r")
            loss = np.memmap(paths["loss.bin"], dtype=np.uint8, mode="r")
            self._maps[k] = (ids, loss)
        return self._maps[k]

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Document ``i`` -> (ids int64 (L,), loss_mask bool (L,)).

        Every read is checked (whatever ``verify`` says, at the cost of a max over the
        document): ids inside the vocabulary, loss flags 0 or 1. A flipped byte that leaves
        them in range is found only by ``verify="full"``.
        """
        k = int(self.doc_shard[i])
        ids, loss = self._map(k)
        s, n = int(self.doc_start[i]), int(self.doc_len[i])
        doc_ids, doc_loss = np.array(ids[s : s + n], dtype=np.int64), np.array(loss[s : s + n])
        problem, file = None, "ids.bin"
        if doc_ids.size and (int(doc_ids.max()) >= self.vocab.size or int(doc_ids.min()) < 0):
            bad = doc_ids[(doc_ids >= self.vocab.size) | (doc_ids < 0)][0]
            problem = f"holds id {bad}, outside the vocabulary [0, {self.vocab.size})"
        elif doc_loss.size and int(doc_loss.max()) > 1:
            problem, file = "has loss flags other than 0 and 1", "loss.bin"
        elif self.framed and (n < 2 or doc_ids[0] != BOS or doc_ids[-1] != EOS):
            docs = shard_paths(self.path, self._shard_index[k])["docs.npy"].name
            problem = f"is not <bos> ... <eos> (its ids, or its offsets in {docs}, changed)"
        if problem:
            where = shard_paths(self.path, self._shard_index[k])[file]
            doc = i - int(self._first_doc[k])
            raise ShardError(f"{where}: corrupted shard: document {doc} {problem}")
        return doc_ids, doc_loss.astype(bool)

    def __getstate__(self) -> dict:  # memmaps are reopened in each worker, never pickled
        return {**self.__dict__, "_maps": {}}
