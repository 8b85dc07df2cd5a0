"""WebDataset tar shards -> our documents: the format of LAION-style image-text sets and of
many speech sets, read with the standard library's ``tarfile``.

A sample is the members sharing a key (``key.jpg|png|webp`` or ``key.wav|flac|mp3`` beside
``key.txt`` or ``key.json`` holding ``caption``/``text``/``transcript``). An *order*
says how a sample becomes an interleaved document: ``text,image`` (caption then image),
``image,text`` (image then caption), ``text,audio``, ``audio,text``; several orders with
weights split the samples between them (chosen from the key's hash: the same sample takes
the same order on every run). Media are extracted once next to the documents file, so
``tokenize``, ``validate`` and the tokenizer trainers read them as they read any file.

A corrupt tar, a sample without a caption or without media, an unreadable member: each
is counted by reason and named ``SHARD.tar/KEY`` in the report, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path

from native_mm.documents import DocumentError, SkipReport
from native_mm.io import atomic_write, write_bytes

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")
AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg")
TEXT_KEYS = ("caption", "text", "transcript", "txt")
KINDS = ("text", "image", "audio")
DEFAULT_ORDERS = "text,image;image,text"  # image-caption pairs, both directions equally


def parse_orders(spec: str) -> list[tuple[tuple[str, ...], float]]:
    """``"text,image=0.7;image,text=0.3"`` -> ``[(("text", "image"), 0.7), ...]``
    (weights default to 1; normalised later)."""
    orders = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kinds, _, w = part.partition("=")
        order = tuple(k.strip() for k in kinds.split(","))
        if len(order) < 2 or any(k not in KINDS for k in order) or "text" not in order:
            raise ValueError(f"order {part!r}: kinds among {KINDS}, a text and a medium")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"order {part!r}: weight {w!r} is not a number") from None
        if not weight > 0:
            raise ValueError(f"order {part!r}: weight must be > 0")
        orders.append((order, weight))
    if not orders:
        raise ValueError(f"orders {spec!r}: give at least one, e.g. 'text,image'")
    return orders


def _pick(key: str, orders: list[tuple[tuple[str, ...], float]]) -> tuple[str, ...]:
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    total = sum(w for _, w in orders)
    acc = 0.0
    for order, w in orders:
        acc += w / total
        if u < acc:
            return order
    return orders[-1][0]


def _caption(data: bytes, name: str) -> str:
    text = data.decode("utf-8").strip()
    if name.endswith(".json"):
        obj = json.loads(text)
        found = [obj[k] for k in TEXT_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)]
        text = found[0].strip() if found else ""
    return text


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


def convert(
    tars: list[str | Path], out: str | Path, orders: str = DEFAULT_ORDERS
) -> tuple[Path, SkipReport]:
    """Write ``OUT/documents.jsonl`` and the extracted media under ``OUT/media/``.

    Returns the documents file and the report of what was skipped and why.
    """
    out, plan = Path(out), parse_orders(orders)
    report, lines = SkipReport(), []
    for tar in map(Path, tars):
        for key, members in _samples(tar, report):
            where = f"{tar.name}/{key}"

            def skip(message: str, reason: str, where: str = where) -> None:
                report.add(DocumentError(where, None, None, message, reason))

            text_name = next((s for s in (".txt", ".json") if s in members), None)
            media = {
                "image": next((s for s in IMAGE_EXT if s in members), None),
                "audio": next((s for s in AUDIO_EXT if s in members), None),
            }
            try:
                text = _caption(members[text_name][1], text_name) if text_name else ""
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                skip(f"unreadable caption ({type(e).__name__})", "bad_caption")
                continue
            if not text:
                skip("no caption (.txt or .json with caption/text/transcript)", "no_caption")
                continue
            order = _pick(key, [(o, w) for o, w in plan if all(k == "text" or media[k] for k in o)]
                          or plan)  # fmt: skip
            missing = [k for k in order if k != "text" and not media[k]]
            if missing:
                skip(f"no {missing[0]} member for order {','.join(order)}", "no_media")
                continue
            segments = []
            for kind in order:
                if kind == "text":
                    segments.append({"text": text})
                    continue
                name, data = members[media[kind]]
                if not data:
                    skip(f"empty {kind} member {name}", "bad_media")
                    break
                rel = Path("media") / tar.stem / (key.replace("/", "_") + media[kind])
                write_bytes(out / rel, data)
                segments.append({kind: str(rel)})
            else:
                lines.append(json.dumps({"id": where, "segments": segments}))
                report.documents += 1
    docs = out / "documents.jsonl"
    with atomic_write(docs, "w") as f:  # creates OUT when no sample was kept
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return docs, report
