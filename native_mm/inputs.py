"""The formats people have, for every reader of media: a WebDataset tar (or a folder laid
out like one), a Parquet file or a ``datasets`` folder becomes a documents file plus media
files, which ``tokenize``, ``validate`` and the tokenizer trainers read like our own JSONL.

``tokenize`` converts into its output folder (the documents are part of the build); a
tokenizer trainer, which needs only the media, converts into a temporary folder that lives
as long as the process (:func:`media_documents`) and keeps uncaptioned media too.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from native_mm import hf_in, webdataset_in
from native_mm.documents import SkipReport
from native_mm.io import write_json
from native_mm.samples_in import DEFAULT_ORDERS


def is_foreign(path: str | Path) -> bool:
    """A tar shard, Parquet file or ``datasets`` folder (not our JSONL, not a media folder)."""
    path = Path(path)
    return path.suffix == ".tar" or hf_in.is_hf_input(path)


def converts(path: str | Path) -> bool:
    """Whether ``tokenize`` converts ``path`` into documents first: a foreign input or a
    folder of ``key.ext`` samples (anything but our JSONL)."""
    return Path(path).is_dir() or is_foreign(path)


def _stamp(path: Path) -> str:
    """What the input is now: size and mtime of the file, or of every file of a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    rows = [(str(f.relative_to(path)) if f != path else "", f.stat().st_size,
             f.stat().st_mtime_ns) for f in files]  # fmt: skip
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def to_documents(
    path: str | Path,
    dest: str | Path,
    orders: str = DEFAULT_ORDERS,
    columns: str | None = None,
    captions: bool = True,
) -> tuple[Path, SkipReport]:
    """Convert ``path`` (a tar, a folder of ``key.ext`` files, a Parquet file or a
    ``datasets`` folder) into ``dest/documents.jsonl`` + media; returns it and the skips.
    ``captions=False`` keeps a medium without a caption as a document of its own.

    A conversion is done once: ``dest/converted.json`` records the input's sizes and
    times and the options, and a rerun (a resumed tokenize, a merge, a part after another
    part or a Dask conversion task) with the same input and options reads it back.
    """
    path, dest = Path(path), Path(dest)
    key = {"input": str(path.resolve()), "stamp": _stamp(path), "orders": orders,
           "columns": columns, "captions": captions, "version": 1}  # fmt: skip
    marker, docs = dest / "converted.json", dest / "documents.jsonl"
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        done = {}
    if done.get("key") == key and docs.is_file():
        report = SkipReport(documents=done["documents"], messages=[tuple(m) for m in
                            done["messages"]], reasons=done["reasons"])  # fmt: skip
        report.counts.update(done["counts"])
        return docs, report
    if hf_in.is_hf_input(path):
        docs, report = hf_in.convert([path], dest, orders, columns, captions=captions)
    else:
        docs, report = webdataset_in.convert([path], dest, orders, captions=captions)
    write_json(marker, {"key": key, "documents": report.documents, "counts": report.counts,
                        "messages": report.messages, "reasons": report.reasons})  # fmt: skip
    return docs, report


def media_documents(path: str | Path) -> tuple[Path, SkipReport]:
    """For readers that want the media only: ``path`` as a documents file in a temporary
    folder removed at exit, and the report of what was skipped."""
    tmp = Path(tempfile.mkdtemp(prefix="native_mm_input_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return to_documents(path, tmp, "text,image;text,audio", captions=False)
