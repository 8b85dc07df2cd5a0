"""WebDataset tar shards -> our documents: the format of LAION-style image-text sets and of
many speech sets, read with the standard library's ``tarfile``. A plain folder laid out the
same way (``photos/001.png`` beside ``photos/001.txt``: a tar unpacked) reads the same.

A sample is the members sharing a key (``key.jpg|png|webp`` or ``key.wav|flac|mp3`` beside
``key.txt`` or ``key.json`` holding ``caption``/``text``/``transcript``); it becomes a
document in one of the orders asked (:mod:`native_mm.samples_in`). A corrupt tar, a sample
without a caption or without media, an unreadable member: each is counted by reason and
named ``SHARD.tar/KEY`` in the report, never a crash.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path

from native_mm.documents import DocumentError, SkipReport
from native_mm.samples_in import DEFAULT_ORDERS, DocumentWriter, text_of

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")
AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg")


def _samples(tar: Path, report: SkipReport) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """(key, {suffix: (member name, bytes)}) per sample, in file order."""
    try:
        with tarfile.open(tar) as tf:
            current, members = None, {}
            for m in tf:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)  # key: the path up to the name's first dot
                stem, dot, suffix = base.partition(".")
                key = m.name[: len(m.name) - len(base)] + stem
                if key != current and current is not None:
                    yield current, members
                    members = {}
                current = key
                f = tf.extractfile(m)
                members["." + suffix.lower() if dot else ""] = (m.name, f.read() if f else b"")
            if current is not None:
                yield current, members
            size = tar.stat().st_size
            if size < tf.offset + 1024:  # no end-of-archive blocks: cut short
                why = f"truncated tar shard (ends at byte {size:,} without its end blocks)"
                report.add(DocumentError(tar, None, None, why, "corrupt_tar"))
    except (tarfile.TarError, OSError, EOFError) as e:
        report.add(DocumentError(tar, None, None, f"corrupt tar shard ({e})", "corrupt_tar"))


def _folder_samples(
    folder: Path, report: SkipReport
) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """The samples of a folder of ``key.ext`` files (subfolders too), in name order."""
    groups: dict[str, list[Path]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(folder).as_posix()
        groups.setdefault(rel[: len(rel) - len(f.name)] + f.name.partition(".")[0], []).append(f)
    for key, files in groups.items():
        members = {}
        for f in files:
            try:
                members["." + f.name.partition(".")[2].lower()] = (f.name, f.read_bytes())
            except OSError as e:
                why = f"unreadable file ({type(e).__name__})"
                report.add(DocumentError(f"{folder.name}/{key}", None, None, why, "bad_media"))
        yield key, members


def convert(
    tars: list[str | Path], out: str | Path, orders: str = DEFAULT_ORDERS, captions: bool = True
) -> tuple[Path, SkipReport]:
    """Write ``OUT/documents.jsonl`` and the extracted media under ``OUT/media/`` from tar
    shards or folders of ``key.ext`` files.

    Returns the documents file and the report of what was skipped and why.
    """
    writer = DocumentWriter(out, orders, captions)
    for tar in map(Path, tars):
        read = _folder_samples if tar.is_dir() else _samples
        for key, members in read(tar, writer.report):
            where = f"{tar.name}/{key}"
            text_name = next((s for s in (".txt", ".json") if s in members), None)
            try:
                text = text_of(members[text_name][1], text_name) if text_name else ""
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                writer.skip(where, f"unreadable caption ({type(e).__name__})", "bad_caption")
                continue
            media = {}
            for kind, exts in (("image", IMAGE_EXT), ("audio", AUDIO_EXT)):
                suffix = next((s for s in exts if s in members), None)
                media[kind] = (suffix, members[suffix][1]) if suffix else None
            writer.add(where, text, media)
    return writer.finish()
