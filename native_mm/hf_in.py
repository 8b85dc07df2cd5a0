"""Hugging Face datasets on disk and Parquet files -> our documents, read with pyarrow.

Inputs: a ``save_to_disk`` folder (its ``state.json`` names the Arrow stream files) or a
``.parquet`` file (what the Hub serves and ``Dataset.to_parquet`` writes). Columns: the
caption is the first string column named caption/text/transcript/sentence; images and
clips are the columns of ``datasets``' Image/Audio features (a struct of bytes and path,
named in the schema's ``huggingface`` metadata) or binary columns named image/audio/jpg/
png/wav/flac/mp3; ``columns`` (``text=title,image=photo``) names them when the guess is
wrong. A cell without bytes but with a path reads that file (relative to the input's
folder), as ``datasets`` does. Each row becomes a document in one of the orders asked
(:mod:`native_mm.samples_in`); a bad file, a missing caption or medium is counted and named
``FILE/ROW``, never a crash. pyarrow is the ``data`` extra: ``pip install native-mm[data]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from native_mm.documents import DocumentError, SkipReport
from native_mm.extras import require
from native_mm.samples_in import DEFAULT_ORDERS, TEXT_KEYS, DocumentWriter, media_suffix

MEDIA_NAMES = {"image": ("image", "img", "jpg", "jpeg", "png", "webp"),
               "audio": ("audio", "wav", "flac", "mp3", "speech")}  # fmt: skip
BATCH_ROWS = 256


class DatasetError(ValueError):
    """Columns not in the dataset, a DatasetDict instead of a split: the user's to fix."""


def is_hf_input(path: Path) -> bool:
    return path.suffix == ".parquet" or any(
        (path / f).is_file() for f in ("state.json", "dataset_dict.json")
    )


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"text=title,image=photo"`` -> ``{"text": "title", "image": "photo"}``."""
    out = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        kind, eq, name = part.partition("=")
        if not eq or kind.strip() not in ("text", "image", "audio") or not name.strip():
            raise ValueError(f"columns {part!r}: give KIND=COLUMN, KIND among text/image/audio")
        out[kind.strip()] = name.strip()
    return out


def _features(schema: Any) -> dict[str, str]:
    """Column -> ``datasets`` feature type (Image, Audio, Value, ...) from the metadata."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feats = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return {k: v.get("_type", "") for k, v in feats.items() if isinstance(v, dict)}


def choose_columns(schema: Any, columns: dict[str, str], where: str) -> dict[str, str | None]:
    """Which column holds the caption, the image and the clip (None: this input has none)."""
    import pyarrow as pa

    names, feats = list(schema.names), _features(schema)
    for kind, name in columns.items():
        if name not in names:
            raise DatasetError(f"{where}: no column {name!r} for {kind} (columns: {names})")

    def media_col(kind: str) -> str | None:
        by_type = [n for n in names if feats.get(n) == kind.capitalize()]
        by_name = [n for n in names if n.lower() in MEDIA_NAMES[kind]
                   and (pa.types.is_binary(schema.field(n).type)
                        or pa.types.is_struct(schema.field(n).type))]  # fmt: skip
        return (by_type or by_name or [None])[0]

    text = [n for n in names if n.lower() in TEXT_KEYS and pa.types.is_string(schema.field(n).type)]
    return {
        "text": columns.get("text", (text or [None])[0]),
        "image": columns.get("image", media_col("image")),
        "audio": columns.get("audio", media_col("audio")),
    }


def _batches(path: Path) -> Iterator[Any]:
    """Record batches of a Parquet file or of a ``save_to_disk`` folder's Arrow files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        return
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DatasetError(f"{path}: a DatasetDict; give one split's folder: {path}/{splits[0]}"
                          if splits else f"{path}: a DatasetDict without splits")  # fmt: skip
    state = json.loads((path / "state.json").read_text())
    for f in state.get("_data_files", []):
        with pa.memory_map(str(path / f["filename"])) as source:
            yield from pa.ipc.open_stream(source)


def _media(cell: Any, root: Path) -> tuple[str, bytes] | None:
    """A cell of an Image/Audio struct or a binary column -> (suffix, bytes)."""
    if cell is None:
        return None
    if isinstance(cell, bytes):
        return media_suffix(cell), cell
    data, name = cell.get("bytes"), cell.get("path")
    if not data and name:
        file = Path(name) if Path(name).is_absolute() else root / name
        data = file.read_bytes() if file.is_file() else None
    return (media_suffix(data, name), data) if data else None


def convert(
    inputs: list[str | Path],
    out: str | Path,
    orders: str = DEFAULT_ORDERS,
    columns: str | None = None,
    captions: bool = True,
) -> tuple[Path, SkipReport]:
    """Write ``OUT/documents.jsonl`` and the media under ``OUT/media/`` from Parquet files
    or ``save_to_disk`` folders; returns the documents file and the skip report."""
    require("pyarrow", "data", "reading Parquet files and Hugging Face datasets")
    import pyarrow as pa

    writer, mapping = DocumentWriter(out, orders, captions), parse_columns(columns)
    for path in map(Path, inputs):
        root = path.parent if path.suffix == ".parquet" else path
        row, cols = 0, None
        try:
            for batch in _batches(path):
                cols = cols or choose_columns(batch.schema, mapping, path.name)
                if cols["image"] is None and cols["audio"] is None:
                    raise DatasetError(
                        f"{path.name}: no image or audio column among {batch.schema.names} "
                        "(name them with --columns image=COL or audio=COL)"
                    )
                for rec in batch.select([c for c in cols.values() if c]).to_pylist():
                    where = f"{path.name}/{row}"
                    row += 1
                    text = rec.get(cols["text"]) if cols["text"] else None
                    media = {k: _media(rec.get(cols[k]), root) if cols[k] else None
                             for k in ("image", "audio")}  # fmt: skip
                    writer.add(where, (text or "").strip() if isinstance(text, str) else "", media)
        except DatasetError:
            raise
        except (pa.ArrowException, OSError, ValueError, KeyError) as e:
            why = f"unreadable after {row} rows ({type(e).__name__}: {e})"
            writer.report.add(DocumentError(path, None, None, why, "corrupt_file"))
    return writer.finish()
