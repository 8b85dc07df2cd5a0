"""Media layouts: where one media span's codes sit in the shared id sequence.

In the spirit of audiocraft's codebook patterns, each media kind has one layout object,
the only place that turns its codes into ids and back, says which ids may come at a
position inside its span (the decoding constraint) and finds its spans (the loss and
dropout masks):

    ImageRaster         <boi> <grid h> <grid w> codes in raster order <eoi>
    AudioFrameMajor(q)  <boa> t0q0 t0q1 .. t0q(q-1) t1q0 ..  <eoa>   (q RVQ levels a frame)

:class:`Layout` holds one layout per media kind. It is written into the shard manifest
and the checkpoint, so training, generation and evaluation read it instead of being told
"how many levels" by hand. A new layout (image tiles, a delayed audio pattern) is a new
class with the same methods and a name in :data:`LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from einops import rearrange

from native_mm.vocab import BOA, BOI, EOA, EOI, Vocab


class LayoutError(ValueError):
    """A layout that does not fit the vocabulary, or layouts that disagree."""


def close(ids: np.ndarray, start: int, closer: int) -> tuple[int, bool]:
    """(index just past the first ``closer`` after ``start``, found) or (len, False)."""
    hits = np.flatnonzero(ids[start + 1 :] == closer)
    return (start + 2 + int(hits[0]), True) if hits.size else (len(ids), False)


@dataclass(frozen=True)
class ImageRaster:
    """An image as its grid size then its codes row by row."""

    name: ClassVar[str] = "raster"
    kind: ClassVar[str] = "image"
    opener: ClassVar[int] = BOI
    closer: ClassVar[int] = EOI

    def check(self, vocab: Vocab) -> None:
        if not vocab.image_codes:
            raise LayoutError("this vocabulary has no image range")

    def prefix(self, h: int, w: int, vocab: Vocab) -> list[int]:
        """``<boi>`` and the two grid tokens that open an ``h`` x ``w`` span."""
        self.check(vocab)
        g, g0 = vocab.image_max_grid, vocab.ranges["image_grid"].start
        if not (1 <= h <= g and 1 <= w <= g):
            raise LayoutError(f"image grid {h}x{w} outside 1..{g} (vocab image_max_grid)")
        return [BOI, g0 + h - 1, g0 + w - 1]

    def encode(self, codes: np.ndarray, vocab: Vocab) -> np.ndarray:
        """Local codes ``(h, w)`` -> the whole span's ids."""
        body = vocab.ranges["image"].start + rearrange(codes, "h w -> (h w)")
        return np.concatenate([self.prefix(*codes.shape, vocab), body, [EOI]])

    def span_length(self, h: int, w: int) -> int:
        return h * w + 4  # <boi> h w codes <eoi>

    def decode(self, ids: np.ndarray, start: int, vocab: Vocab) -> tuple[Any, int, str]:
        """The span opening at ``start`` -> (codes ``(h, w)`` or None, next index, error)."""
        grid_r, code_r = vocab.ranges["image_grid"], vocab.ranges["image"]
        end, closed = close(ids, start, EOI)
        if start + 2 >= end - closed:
            return None, end, f"position {start}: image span cut off before its grid tokens"
        gh, gw = int(ids[start + 1]), int(ids[start + 2])
        if gh not in grid_r or gw not in grid_r:
            got = f"{vocab.describe(gh)}, {vocab.describe(gw)}"
            return None, end, f"position {start + 1}: image span needs two grid tokens, got {got}"
        h, w = gh - grid_r.start + 1, gw - grid_r.start + 1
        body = ids[start + 3 : end - closed]
        if not closed:
            n = f"{len(body)} of {h * w} codes"
            return None, end, f"position {start}: image span {h}x{w} not closed by <eoi> ({n})"
        if len(body) != h * w:
            n = f"{len(body)} codes, needs {h * w}"
            return None, end, f"position {start}: image span {h}x{w} has {n}"
        bad = np.flatnonzero((body < code_r.start) | (body >= code_r.stop))
        if bad.size:
            p = start + 3 + int(bad[0])
            return None, end, f"position {p}: {vocab.describe(int(ids[p]))} inside an image span"
        return rearrange(body - code_r.start, "(h w) -> h w", h=h, w=w), end, ""

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class AudioFrameMajor:
    """Audio as frames of ``levels`` RVQ codes; code ``i`` of a span has level ``i % levels``.

    Fewer levels than the vocabulary has is a coarser, shorter layout; extra levels of an
    encoded clip are dropped on encode.
    """

    levels: int
    name: ClassVar[str] = "frame_major"
    kind: ClassVar[str] = "audio"
    opener: ClassVar[int] = BOA
    closer: ClassVar[int] = EOA

    def check(self, vocab: Vocab) -> None:
        if not 1 <= self.levels <= vocab.audio_levels:
            raise LayoutError(
                f"audio_levels={self.levels} but the vocabulary has {vocab.audio_levels} levels"
            )

    def offsets(self, vocab: Vocab) -> np.ndarray:
        """``(Q,)`` first id of each level's range."""
        return vocab.ranges["audio0"].start + np.arange(self.levels) * vocab.audio_codes

    def level_at(self, count: Any) -> Any:
        """The level of the ``count``-th code of a span (int or tensor)."""
        return count % self.levels

    def encode(self, codes: np.ndarray, vocab: Vocab) -> np.ndarray:
        """Local codes ``(Q', T)``, ``Q' >= levels`` -> the whole span's ids."""
        self.check(vocab)
        if codes.shape[0] < self.levels:
            raise LayoutError(
                f"audio span has {codes.shape[0]} levels, the layout needs {self.levels}"
            )
        body = rearrange(codes[: self.levels] + self.offsets(vocab)[:, None], "q t -> (t q)")
        return np.concatenate([[BOA], body, [EOA]])

    def span_length(self, frames: int) -> int:
        return frames * self.levels + 2  # <boa> frames <eoa>

    def decode(self, ids: np.ndarray, start: int, vocab: Vocab) -> tuple[Any, int, str]:
        """The span opening at ``start`` -> (codes ``(Q, T)`` or None, next index, error)."""
        q = self.levels
        end, closed = close(ids, start, EOA)
        body = ids[start + 1 : end - closed]
        if not closed:
            return (
                None,
                end,
                f"position {start}: audio span not closed by <eoa> ({len(body)} codes)",
            )
        if len(body) % q:
            n = f"{len(body)} codes is not whole frames of {q} levels"
            return None, end, f"position {start}: audio span of {n}"
        local = body - np.tile(self.offsets(vocab), len(body) // q)  # level = pos % q
        bad = np.flatnonzero((local < 0) | (local >= vocab.audio_codes))
        if bad.size:
            p, want = start + 1 + int(bad[0]), int(bad[0]) % q
            got = vocab.describe(int(ids[p]))
            return None, end, f"position {p}: {got} where audio level {want} was expected"
        return rearrange(local, "(t q) -> q t", q=q), end, ""

    def to_dict(self) -> dict:
        return {"name": self.name, "levels": self.levels}


LAYOUTS: dict[str, type] = {"raster": ImageRaster, "frame_major": AudioFrameMajor}


@dataclass(frozen=True)
class Layout:
    """One layout per media kind; None: the data holds no such span (decided later)."""

    image: ImageRaster | None = None
    audio: AudioFrameMajor | None = None

    @classmethod
    def for_vocab(cls, vocab: Vocab, audio_levels: int | None = None) -> Layout:
        """The default layouts of a vocabulary (audio: ``audio_levels`` or all levels)."""
        q = vocab.audio_levels if audio_levels is None else audio_levels
        layout = cls(
            image=ImageRaster() if vocab.image_codes else None,
            audio=AudioFrameMajor(q) if vocab.audio_levels or q else None,
        )
        return layout.check(vocab)

    def resolved(self, vocab: Vocab) -> Layout:
        """Kinds left open (None) filled with the vocabulary's defaults, then checked."""
        full = Layout.for_vocab(vocab)
        return Layout(self.image or full.image, self.audio or full.audio).check(vocab)

    def check(self, vocab: Vocab) -> Layout:
        for media in (self.image, self.audio):
            if media is not None:
                media.check(vocab)
        return self

    def media(self, kind: str) -> ImageRaster | AudioFrameMajor:
        media = self.image if kind == "image" else self.audio if kind == "audio" else None
        if media is None:
            raise LayoutError(f"this layout has no {kind} spans")
        return media

    def find_spans(self, ids: np.ndarray) -> list[tuple[int, int, str]]:
        """Closed media spans of one document as ``(start, stop, kind)``, stop exclusive."""
        out = []
        for media in (self.image or ImageRaster(), self.audio or AudioFrameMajor(1)):
            stops = np.flatnonzero(ids == media.closer)
            for s in np.flatnonzero(ids == media.opener):
                after = stops[stops > s]
                if after.size:
                    out.append((int(s), int(after[0]) + 1, media.kind))
        return sorted(out)

    # ---- saved form ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        parts = {"image": self.image, "audio": self.audio}
        return {k: None if m is None else m.to_dict() for k, m in parts.items()}

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "layout") -> Layout:
        """Rebuild from :meth:`to_dict`; unknown names or fields are errors naming ``source``."""
        parts: dict[str, Any] = {}
        for kind, spec in (d or {}).items():
            if kind not in ("image", "audio"):
                raise LayoutError(f"{source}: unknown media kind {kind!r} in the layout")
            if spec is None:
                continue
            spec = dict(spec)
            name = spec.pop("name", None)
            cls_ = LAYOUTS.get(name)
            if cls_ is None or cls_.kind != kind:
                raise LayoutError(
                    f"{source}: no {kind} layout named {name!r}; have {sorted(LAYOUTS)}"
                )
            try:
                parts[kind] = cls_(**spec)
            except TypeError as e:
                raise LayoutError(f"{source}: {kind} layout: {e}") from None
        return cls(**parts)

    @classmethod
    def from_manifest(cls, manifest: dict, source: str = "manifest") -> Layout:
        """The layout a shard manifest or checkpoint records (older files: ``audio_levels``)."""
        if manifest.get("layout") is not None:
            return cls.from_dict(manifest["layout"], source)
        q = manifest.get("audio_levels")
        return cls(audio=None if q is None else AudioFrameMajor(int(q)))

    @staticmethod
    def merge(layouts: dict[str, Layout]) -> Layout:
        """One layout for data from several sources; kinds they set must agree."""
        out: dict[str, Any] = {}
        for kind in ("image", "audio"):
            seen = {src: m for src, lay in layouts.items() if (m := getattr(lay, kind))}
            if len(set(seen.values())) > 1:
                raise LayoutError(f"data: sources with different {kind} layouts: {seen}")
            out[kind] = next(iter(seen.values()), None)
        return Layout(**out)
