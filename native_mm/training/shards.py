"""Packed token shards: documents (JSONL) + a tokenizer set -> memmap shards + manifest.

Layout of a shard directory::

    out/manifest.json              vocabulary manifest, counts per modality and source,
                                   every shard file's sha256, and its own checksum
    out/skipped.json               every skipped record with its reason
    out/shards/00000.ids.bin       token ids, ``vocab.dtype`` (narrowest unsigned int)
    out/shards/00000.loss.bin      uint8 per token: 1 = training target, 0 = prompt/context
    out/shards/00000.docs.npy      int64 ``(n_docs + 1,)`` document start offsets
    out/shards/00000.done.json     completion marker (counts, checksums, skipped records)

Resumability: valid documents are numbered in file order and document ``k`` always goes
to shard ``k // docs_per_shard``. A shard counts as done only when its marker exists, was
written for the same build (inputs, tokenizer fingerprints, options) and its files match
the marker's checksums; every file is written atomically (temp file + rename) and the
marker last. Re-running after an interruption therefore redoes exactly the unfinished
shards: no document is lost or written twice.

Parts: the same rule lets N independent jobs share one output directory (``part=(k, n)``
encodes shards ``i % n == k``, each part under its own lock) and a merge write the
manifest from their markers: the shards are the bytes one process would write.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from native_mm import inputs as formats  # `inputs` is tokenize's argument
from native_mm.io import (
    atomic_write,
    directory_lock,
    read_json,
    remove_temp_files,
    sha256_file,
    write_bytes,
    write_json,
)
from native_mm.layouts import Layout
from native_mm.samples_in import DEFAULT_ORDERS
from native_mm.training.media_cache import MediaCache
from native_mm.vocab import BOS, EOS, MODALITIES, Vocab

SHARDS_VERSION = 1
FILES = ("ids.bin", "loss.bin", "docs.npy")


class ShardError(ValueError):
    """A missing, corrupted or inconsistent shard or manifest; the message names the file."""


# ---- checksummed manifest -------------------------------------------------------------
def _json_digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write ``manifest`` with a ``checksum`` field over its canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    write_json(path, {**body, "checksum": _json_digest(body)})


def read_manifest(path: str | Path) -> dict:
    """Read and verify a checksummed shard manifest (file, or the directory holding it)."""
    manifest, path = read_json(
        path, "manifest.json", ShardError, "shard manifest", " (run `native-mm tokenize` first)"
    )
    if not isinstance(manifest, dict) or "checksum" not in manifest:
        raise ShardError(f"{path}: corrupted shard manifest (no checksum field)")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if _json_digest(body) != manifest["checksum"]:
        raise ShardError(f"{path}: corrupted shard manifest (checksum mismatch)")
    if manifest.get("version") != SHARDS_VERSION:
        raise ShardError(f"{path}: shard format version {manifest.get('version')!r}")
    return manifest


# ---- writing one shard ----------------------------------------------------------------
def shard_paths(out_dir: Path, index: int) -> dict[str, Path]:
    base = Path(out_dir) / "shards"
    names = {f: base / f"{index:05d}.{f}" for f in FILES}
    names["done"] = base / f"{index:05d}.done.json"
    return names


def write_shard(
    out_dir: str | Path,
    index: int,
    docs: list[tuple[np.ndarray, np.ndarray]],
    vocab: Vocab,
    meta: dict | None = None,
) -> dict:
    """Write one shard from ``(ids (L,), loss_mask (L,))`` pairs; returns its marker.

    Files are written atomically and the ``.done.json`` marker last.
    """
    paths = shard_paths(Path(out_dir), index)
    lengths = np.array([len(ids) for ids, _ in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([d[0] for d in docs]) if docs else np.zeros(0, np.int64)
    loss = np.concatenate([d[1] for d in docs]) if docs else np.zeros(0, bool)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab.size):
        raise ShardError(f"{paths['ids.bin']}: ids outside the vocabulary [0, {vocab.size})")
    write_bytes(paths["ids.bin"], ids.astype(vocab.dtype).tobytes())
    write_bytes(paths["loss.bin"], loss.astype(np.uint8).tobytes())
    with atomic_write(paths["docs.npy"], size=offsets.nbytes + 128) as f:  # + the .npy header
        np.save(f, offsets)
    counts = np.bincount(vocab.modality_of(ids), minlength=len(MODALITIES)) if ids.size else []
    marker = {
        "index": index,
        "documents": len(docs),
        "tokens": int(ids.size),
        "loss_tokens": int(loss.sum()),
        "modality_tokens": {m: int(c) for m, c in zip(MODALITIES, counts, strict=False)},
        "files": {f: {"name": paths[f].name, "sha256": sha256_file(paths[f])} for f in FILES},
        **(meta or {}),
    }
    write_json(paths["done"], marker)
    return marker


def _marker_ok(out_dir: Path, index: int, build_key: str) -> dict | None:
    """The shard's marker if it is complete, for this build, and its files are intact."""
    paths = shard_paths(out_dir, index)
    try:
        marker = json.loads(paths["done"].read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if marker.get("build_key") != build_key:
        return None
    for f in FILES:
        if not paths[f].is_file() or sha256_file(paths[f]) != marker["files"][f]["sha256"]:
            return None
    return marker


def converted_dir(out_dir: str | Path, source: str | Path) -> Path:
    """Where a tar, folder, Parquet file or dataset given to ``tokenize`` becomes documents."""
    return Path(out_dir) / "sources" / Path(source).stem


# ---- the tokenize job -----------------------------------------------------------------
@dataclass
class _Job:
    out_dir: str
    index: int
    docs: list  # list[(source name, Document)]
    build_key: str


_WORKER: dict[str, Any] = {}


def _init_worker(
    tokenizers: Any, layout: Layout | None, max_audio_seconds: float | None = None
) -> None:
    from native_mm.sequence import SequenceCodec
    from native_mm.tokenizers.base import TokenizerSet

    if not isinstance(tokenizers, TokenizerSet):
        tokenizers = TokenizerSet.load(tokenizers)
    if max_audio_seconds is not None and hasattr(tokenizers.audio, "max_seconds"):
        tokenizers.audio.max_seconds = max_audio_seconds
    if "torch" in sys.modules:  # one intra-op thread per worker: the workers are the parallelism
        sys.modules["torch"].set_num_threads(1)
    _WORKER["tokenizers"] = tokenizers
    _WORKER["codec"] = SequenceCodec(tokenizers.vocab, layout)
    _WORKER["cache"] = MediaCache(tokenizers)


def _run_job(job: _Job) -> dict:
    from native_mm.sequence import encode_document

    tokenizers, codec, cache = _WORKER["tokenizers"], _WORKER["codec"], _WORKER["cache"]
    encoded, kept, skipped = [], [], []
    sources: collections.Counter = collections.Counter()
    source_tokens: collections.Counter = collections.Counter()
    cache.prefill([doc for _, doc in job.docs])
    for source, doc in job.docs:
        try:
            enc = encode_document(doc, tokenizers, codec, cache)
        except (ValueError, OSError) as e:  # MediaError, SequenceError, unreadable files
            skipped.append(
                {"source": doc.source, "id": doc.id, "reason": type(e).__name__, "message": str(e)}
            )
            continue
        encoded.append((enc.ids, enc.loss_mask))
        kept.append(doc.id)
        sources[source] += 1
        source_tokens[source] += len(enc.ids)
    meta = {
        "build_key": job.build_key,
        "doc_ids": kept,
        "skipped": skipped,
        "sources": {s: {"documents": sources[s], "tokens": source_tokens[s]} for s in sources},
    }
    return write_shard(job.out_dir, job.index, encoded, tokenizers.vocab, meta)


def tokenize(
    inputs: list[str | Path],
    out_dir: str | Path,
    tokenizers: Any,
    docs_per_shard: int = 512,
    workers: int = 2,
    layout: Layout | None = None,
    log: Any = print,
    max_audio_seconds: float | None = None,
    orders: str = DEFAULT_ORDERS,
    columns: str | None = None,
    part: tuple[int, int] | None = None,
    merge: bool = False,
) -> dict:
    """Documents JSONL files (or WebDataset ``.tar`` shards, folders of ``key.ext`` files,
    Parquet files, ``datasets`` ``save_to_disk`` folders) -> packed shards in ``out_dir``;
    returns the manifest.

    Args:
        inputs: JSONL documents files, WebDataset tars or folders, Parquet files or
            ``save_to_disk`` folders; each one's stem names a source in the mixture stats.
            A tar's or folder's samples and a dataset's rows become documents in
            ``out_dir/sources/STEM/`` first (:mod:`native_mm.webdataset_in`,
            :mod:`native_mm.hf_in`).
        out_dir: output directory (created; an existing partial build is resumed).
        tokenizers: a ``TokenizerSet`` or the directory it was saved to.
        docs_per_shard: valid documents per shard (fixes the document -> shard assignment).
        workers: encoding processes (0 = encode in this process).
        layout: media layouts of the sequences (None = the vocabulary's defaults: every
            audio level); recorded in the manifest for training and generation.
        log: progress printer.
        max_audio_seconds: longer audio files are skipped (``MediaTooLong`` in
            skipped.json) before their samples are read (None = the audio tokenizer's
            default, ``tokenizers.audio.DEFAULT_MAX_SECONDS``).
        orders: how a tar's samples or a dataset's rows become documents, e.g.
            ``"text,image=0.7;image,text=0.3"``.
        columns: a dataset's caption/image/audio columns when the guess is wrong
            (``"text=title,image=photo"``).
        part: ``(k, n)``: encode only shards ``i`` with ``i % n == k`` (one of ``n``
            independent jobs, e.g. a Slurm array task, sharing ``out_dir``) and write no
            manifest; returns the part's counts.
        merge: write the manifest from the parts' shards, encoding nothing; a shard no part
            finished is an error naming it. Parts + merge give the same shard bytes as one run.
    """
    from native_mm.documents import SkipReport, read_documents
    from native_mm.tokenizers.base import TokenizerSet

    out_dir = Path(out_dir)
    if part is not None and not (0 <= part[0] < part[1]) or (part and merge):
        raise ValueError(f"part {part}: k/n with 0 <= k < n, and not with merge")
    lock = f".lock.part{part[0]}" if part else ".lock"  # parts write disjoint shards
    with directory_lock(out_dir, "native-mm tokenize", lock):  # never two writers of one file
        if docs_per_shard < 1:
            raise ValueError(f"docs_per_shard must be >= 1, got {docs_per_shard}")
        tset = tokenizers if isinstance(tokenizers, TokenizerSet) else TokenizerSet.load(tokenizers)
        vocab_manifest = tset.manifest()
        if layout is not None:
            layout.resolved(tset.vocab)  # a layout the vocabulary cannot hold: LayoutError now
        docs, invalid, input_info = [], [], []
        for path in map(Path, inputs):
            report, source = SkipReport(), path.stem
            if formats.converts(path):  # a tar, folder, Parquet file or dataset
                name = path.name
                path, report = formats.to_documents(
                    path, converted_dir(out_dir, path), orders, columns
                )
                log(f"  {name}: {report.documents} samples, "
                    f"{report.skipped} skipped {dict(report.counts)}")  # fmt: skip
                report.documents = 0  # counted again as the documents file is read
            for doc in read_documents(path, on_error="skip", report=report):
                docs.append((source, doc))
            invalid += [
                {"source": src, "reason": "invalid_record", "validator_reason": why, "message": msg}
                for (src, msg), why in zip(report.messages, report.reasons, strict=True)
            ]
            input_info.append(
                {"path": str(path), "sha256": sha256_file(path), "skipped": dict(report.counts)}
            )
        build = {
            "inputs": [i["sha256"] for i in input_info],
            "vocab": vocab_manifest,
            "docs_per_shard": docs_per_shard,
            "audio_levels": layout.audio.levels if layout and layout.audio else None,
            "version": SHARDS_VERSION,
        }
        if max_audio_seconds is not None:  # only when set: earlier builds keep their key
            build["max_audio_seconds"] = max_audio_seconds
        build_key = _json_digest(build)
        n_shards = max(1, -(-len(docs) // docs_per_shard))
        markers: dict[int, dict] = {}
        todo = []
        for i in range(n_shards):
            if part and i % part[1] != part[0]:
                continue
            marker = _marker_ok(out_dir, i, build_key)
            if marker is not None:
                markers[i] = marker
            else:
                chunk = docs[i * docs_per_shard : (i + 1) * docs_per_shard]
                todo.append(_Job(str(out_dir), i, chunk, build_key))
        if merge and todo:
            missing = ", ".join(f"{j.index:05d}" for j in todo[:20])
            raise ShardError(
                f"{out_dir}: {len(todo)} of {n_shards} shards not done by the parts "
                f"({missing}{', ...' if len(todo) > 20 else ''}); shard i is part i mod N's"
            )
        if part is None:  # a killed run's half-written files (a part may be writing its own)
            remove_temp_files(out_dir, out_dir / "shards")
        what = f"part {part[0]}/{part[1]}: " if part else ""
        log(f"tokenize: {what}{len(docs)} documents -> {n_shards} shards "
            f"({len(markers)} already done)")  # fmt: skip
        t0 = time.perf_counter()
        # documents/s and an ETA on a terminal (tqdm stays silent when stderr is a file)
        sizes = {j.index: len(j.docs) for j in todo}
        bar = tqdm(total=sum(sizes.values()), unit="doc", desc="tokenize",
                   disable=None, smoothing=0.1)  # fmt: skip
        if todo and workers > 0:
            ctx = mp.get_context("spawn")  # fork after torch threads start can deadlock
            arg = tokenizers if isinstance(tokenizers, TokenizerSet) else str(tokenizers)
            init = (arg, layout, max_audio_seconds)
            with ctx.Pool(min(workers, len(todo)), _init_worker, init) as pool:
                for marker in pool.imap_unordered(_run_job, todo):
                    markers[marker["index"]] = marker
                    bar.update(sizes[marker["index"]])
                    log(f"  shard {marker['index']:05d}: {marker['documents']} docs")
        elif todo:
            _init_worker(tset, layout, max_audio_seconds)
            for job in todo:
                markers[job.index] = _run_job(job)
                bar.update(len(job.docs))
        bar.close()
        if part is not None:
            done = [markers[i] for i in sorted(markers)]
            log(f"tokenize: part {part[0]}/{part[1]} wrote {len(done)} shards; merge when "
                "every part is done")  # fmt: skip
            return {"part": list(part), "shards": [m["index"] for m in done],
                    "documents": sum(m["documents"] for m in done),
                    "tokens": sum(m["tokens"] for m in done)}  # fmt: skip
        manifest = _build_manifest(
            out_dir, markers, n_shards, vocab_manifest, build_key, input_info
        )
        manifest["layout"] = _recorded_layout(manifest, tset.vocab, layout)
        manifest["framed"] = True  # every document <bos> ... <eos>: the reader checks it
        skipped = invalid + [s for i in range(n_shards) for s in markers[i]["skipped"]]
        write_json(out_dir / "skipped.json", {"count": len(skipped), "records": skipped})
        write_manifest(out_dir / "manifest.json", manifest)
        dt = time.perf_counter() - t0
        log(
            f"tokenize: {manifest['documents']} documents, {manifest['tokens']} tokens, "
            f"{len(skipped)} skipped ({dt:.1f}s) -> {out_dir / 'manifest.json'}"
        )
        return manifest


def _recorded_layout(manifest: dict, vocab: Vocab, layout: Layout | None) -> dict:
    """The layouts the model will learn; a kind the shards hold no tokens of is left open
    (None), so text-only data never constrains a later mixture's audio layout."""
    full = (layout or Layout()).resolved(vocab)
    held = manifest["modality_tokens"]
    return Layout(
        full.image if held["image"] else None, full.audio if held["audio"] else None
    ).to_dict()


def _build_manifest(
    out_dir: Path,
    markers: dict[int, dict],
    n_shards: int,
    vocab_manifest: dict,
    build_key: str,
    input_info: list[dict],
) -> dict:
    shards, modality, sources = [], collections.Counter(), {}
    for i in range(n_shards):
        m = markers[i]
        shards.append(
            {
                "index": i,
                "documents": m["documents"],
                "tokens": m["tokens"],
                "files": {f: v for f, v in m["files"].items()},
            }
        )
        modality.update(m["modality_tokens"])
        for s, c in m["sources"].items():
            agg = sources.setdefault(s, {"documents": 0, "tokens": 0})
            agg["documents"] += c["documents"]
            agg["tokens"] += c["tokens"]
    return {
        "version": SHARDS_VERSION,
        "build_key": build_key,
        "vocab": vocab_manifest,
        "dtype": str(Vocab.from_manifest(vocab_manifest).dtype),
        "documents": sum(m["documents"] for m in markers.values()),
        "tokens": sum(m["tokens"] for m in markers.values()),
        "loss_tokens": sum(m["loss_tokens"] for m in markers.values()),
        "modality_tokens": {m: int(modality.get(m, 0)) for m in MODALITIES},
        "sources": sources,
        "inputs": input_info,
        "shards": shards,
    }


def write_shards_from_ids(
    out_dir: str | Path,
    docs: list[tuple[np.ndarray, np.ndarray]],
    vocab: Vocab,
    docs_per_shard: int = 512,
    source: str = "ids",
    fingerprints: dict[str, str] | None = None,
    layout: Layout | None = None,
) -> dict:
    """Shards straight from ``(ids, loss_mask)`` pairs (tests, benchmarks, synthetic data).

    ``layout`` (of the ids' media; None = the vocabulary's defaults) is recorded like
    `tokenize` records it.
    """
    out_dir = Path(out_dir)
    vocab_manifest = vocab.to_manifest(fingerprints)
    build_key = _json_digest({"ids": source, "vocab": vocab_manifest, "n": len(docs)})
    n_shards = max(1, -(-len(docs) // docs_per_shard))
    markers = {}
    for i in range(n_shards):
        chunk = docs[i * docs_per_shard : (i + 1) * docs_per_shard]
        meta = {
            "build_key": build_key,
            "skipped": [],
            "sources": {source: {"documents": len(chunk), "tokens": sum(len(d[0]) for d in chunk)}},
        }
        markers[i] = write_shard(out_dir, i, chunk, vocab, meta)
    manifest = _build_manifest(out_dir, markers, n_shards, vocab_manifest, build_key, [])
    manifest["layout"] = _recorded_layout(manifest, vocab, layout)
    manifest["framed"] = all(len(d[0]) > 1 and d[0][0] == BOS and d[0][-1] == EOS for d in docs)
    write_json(out_dir / "skipped.json", {"count": 0, "records": []})
    write_manifest(out_dir / "manifest.json", manifest)
    return manifest


# ---- reading --------------------------------------------------------------------------
