"""Samples people already have -> our documents: what every foreign-format reader shares.

A *sample* is a caption and at most one image and one clip (an image-caption pair, a
speech clip and its transcript). An *order* says how a sample becomes an interleaved
document: ``text,image`` (caption then image), ``image,text``, ``text,audio``,
``audio,text``; several orders with weights split the samples between them, chosen from
the sample's name (the same sample takes the same order on every run, so a rerun or a
part of a split run writes the same documents). Media are written once next to the
documents file, so ``tokenize``, ``validate`` and the tokenizer trainers read them as any
file. The readers (:mod:`native_mm.webdataset_in`, :mod:`native_mm.hf_in`) only find the
samples; a sample without a caption or a medium is counted by reason and named here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from native_mm.documents import DocumentError, SkipReport
from native_mm.io import atomic_write, write_bytes

KINDS = ("text", "image", "audio")
TEXT_KEYS = ("caption", "text", "transcript", "sentence", "txt")
DEFAULT_ORDERS = "text,image;image,text"  # image-caption pairs, both directions equally
# leading bytes -> file suffix, for media that arrive without a name (Parquet/Arrow cells)
MAGIC = {
    b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"fLaC": ".flac",
    b"OggS": ".ogg", b"ID3": ".mp3", b"\xff\xfb": ".mp3", b"\xff\xf3": ".mp3",
}  # fmt: skip


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


def pick_order(name: str, orders: list[tuple[tuple[str, ...], float]]) -> tuple[str, ...]:
    """The order of the sample called ``name``: a pure function of the name."""
    u = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / 16**12
    total = sum(w for _, w in orders)
    acc = 0.0
    for order, w in orders:
        acc += w / total
        if u < acc:
            return order
    return orders[-1][0]


def media_suffix(data: bytes, name: str | None = None) -> str:
    """A file suffix for media bytes: the name's when it has one, else from the magic."""
    suffix = Path(name).suffix.lower() if name else ""
    if suffix:
        return suffix
    if data[:4] == b"RIFF":
        return ".webp" if data[8:12] == b"WEBP" else ".wav"
    return next((s for m, s in MAGIC.items() if data.startswith(m)), ".bin")


def text_of(data: bytes | str, name: str = "") -> str:
    """A caption from ``.txt`` bytes or a ``.json`` object's caption/text/transcript."""
    text = (data.decode("utf-8") if isinstance(data, bytes) else data).strip()
    if name.endswith(".json"):
        obj = json.loads(text)
        found = [obj[k] for k in TEXT_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)]
        text = found[0].strip() if found else ""
    return text


class DocumentWriter:
    """Collects samples as documents under ``out`` (``documents.jsonl`` + ``media/``).

    Args:
        out: the folder the documents file and the media are written to.
        orders: how samples become documents (:func:`parse_orders`).
        captions: False keeps a sample without a caption as a one-medium document (for
            readers that want the media only, like the tokenizer trainers).
    """

    def __init__(
        self, out: str | Path, orders: str = DEFAULT_ORDERS, captions: bool = True
    ) -> None:
        self.out, self.plan, self.captions = Path(out), parse_orders(orders), captions
        self.report, self.lines = SkipReport(), []

    def skip(self, where: str, message: str, reason: str) -> None:
        self.report.add(DocumentError(where, None, None, message, reason))

    def add(self, where: str, text: str, media: dict[str, tuple[str, bytes] | None]) -> bool:
        """One sample named ``where`` (``SOURCE/KEY``): its caption and ``{kind: (suffix,
        bytes)}``; a document in its order, or a counted skip. True when kept."""
        if not text and not self.captions:  # media only (a tokenizer trainer's input)
            kinds = [k for k in ("image", "audio") if media.get(k)]
            if not kinds:
                self.skip(where, "no image or audio", "no_media")
                return False
            return self._write(where, kinds[:1], text, media)
        if not text:
            self.skip(where, "no caption (a caption/text/transcript field)", "no_caption")
            return False
        fits = [(o, w) for o, w in self.plan if all(k == "text" or media.get(k) for k in o)]
        order = pick_order(where, fits or self.plan)
        missing = [k for k in order if k != "text" and not media.get(k)]
        if missing:
            self.skip(where, f"no {missing[0]} for order {','.join(order)}", "no_media")
            return False
        return self._write(where, order, text, media)

    def _write(self, where: str, order: Sequence[str], text: str, media: dict) -> bool:
        segments = []
        for kind in order:
            if kind == "text":
                segments.append({"text": text})
                continue
            suffix, data = media[kind]
            if not data:
                self.skip(where, f"empty {kind}", "bad_media")
                return False
            rel = Path("media") / (where.replace("/", "_").replace(" ", "_") + suffix)
            write_bytes(self.out / rel, data)
            segments.append({kind: str(rel)})
        self.lines.append(json.dumps({"id": where, "segments": segments}))
        self.report.documents += 1
        return True

    def finish(self) -> tuple[Path, SkipReport]:
        """Write ``documents.jsonl``; returns it and the report of what was skipped."""
        docs = self.out / "documents.jsonl"
        with atomic_write(docs, "w") as f:  # creates OUT when no sample was kept
            f.write("\n".join(self.lines) + ("\n" if self.lines else ""))
        return docs, self.report
