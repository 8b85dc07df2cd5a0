"""The formats people have, for every reader of media: a WebDataset tar (or a folder laid
out like one), a Parquet file or a ``datasets`` folder becomes a documents file plus media
files, which ``tokenize``, ``validate`` and the tokenizer trainers read like our own JSONL.

``tokenize`` converts into its output folder (the documents are part of the build); a
tokenizer trainer, which needs only the media, converts into a temporary folder that lives
as long as the process (:func:`media_documents`) and keeps uncaptioned media too.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from native_mm import hf_in, webdataset_in
from native_mm.documents import SkipReport
from native_mm.samples_in import DEFAULT_ORDERS


def is_foreign(path: str | Path) -> bool:
    """A tar shard, Parquet file or ``datasets`` folder (not our JSONL, not a media folder)."""
    path = Path(path)
    return path.suffix in (".tar", ".parquet") or hf_in.is_hf_input(path)


def to_documents(
    path: str | Path,
    dest: str | Path,
    orders: str = DEFAULT_ORDERS,
    columns: str | None = None,
    captions: bool = True,
) -> tuple[Path, SkipReport]:
    """Convert ``path`` (a tar, a folder of ``key.ext`` files, a Parquet file or a
    ``datasets`` folder) into ``dest/documents.jsonl`` + media; returns it and the skips.
    ``captions=False`` keeps a medium without a caption as a document of its own."""
    path = Path(path)
    if hf_in.is_hf_input(path):
        return hf_in.convert([path], dest, orders, columns, captions=captions)
    return webdataset_in.convert([path], dest, orders, captions=captions)


def media_documents(path: str | Path) -> tuple[Path, SkipReport]:
    """For readers that want the media only: ``path`` as a documents file in a temporary
    folder removed at exit, and the report of what was skipped."""
    tmp = Path(tempfile.mkdtemp(prefix="native_mm_input_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return to_documents(path, tmp, "text,image;text,audio", captions=False)
