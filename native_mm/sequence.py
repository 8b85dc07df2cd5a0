"""Documents <-> shared-vocabulary id sequences: span markers, layouts, loss masks.

A document is a list of spans; each span holds *local* codes of one modality:

    text   (N,)    ->  T0 + piece
    image  (h, w)  ->  <boi> [G0 + h - 1] [G0 + w - 1] (I0 + code) * h*w  <eoi>
    audio  (Q, T)  ->  <boa> (A0 + q*K + code) frame-major: t0q0 t0q1 .. t0q(Q-1) t1q0 ..  <eoa>

and the whole document is wrapped in ``<bos> ... <eos>``. The grid tokens make images
of any size and aspect ratio round-trip; the audio level of a token is its range, so
the model can tell the level of every audio id from the id alone.

Decoding is the exact inverse. Malformed sequences (an unclosed span, a wrong number
of image codes, an audio code of the wrong level, an id from the wrong range) raise
:class:`SequenceError` naming the position in ``strict`` mode; otherwise the bad span
is dropped and the error is reported by :meth:`SequenceCodec.decode_report`.
Outside spans, ``<pad>``, ``<sep>`` and ``<uncond>`` are control tokens and carry no
content: they are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import rearrange

from native_mm.vocab import BOA, BOI, BOS, EOA, EOI, EOS, PAD, SEP, UNCOND, Vocab

if TYPE_CHECKING:  # tokenizers import sequence-free code only; keep the arrow one-way
    from native_mm.tokenizers.base import TokenizerSet

KINDS = ("text", "image", "audio")
_CONTROL = (PAD, SEP, UNCOND)


class SequenceError(ValueError):
    """A malformed id sequence or span; the message names the position."""


@dataclass
class Span:
    """One segment of local codes: text ``(N,)``, image ``(h, w)`` or audio ``(Q, T)``."""

    kind: str
    codes: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SequenceError(f"span kind {self.kind!r} is not one of {KINDS}")
        self.codes = np.asarray(self.codes, dtype=np.int64)
        want = 1 if self.kind == "text" else 2
        if self.codes.ndim != want:
            raise SequenceError(
                f"{self.kind} span codes must be {want}-D, got shape {self.codes.shape}"
            )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Span)
            and self.kind == other.kind
            and np.array_equal(self.codes, other.codes)
        )


@dataclass
class Encoded:
    """One encoded document: ids, the modality of each id, and which ids are targets."""

    ids: np.ndarray  # (L,) int64
    modality: np.ndarray  # (L,) uint8, index into vocab.MODALITIES
    loss_mask: np.ndarray  # (L,) bool, False for prompt tokens that are not trained on

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DecodeReport:
    """Spans that decoded, plus a message for every malformed span that was dropped."""

    spans: list[Span] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SequenceCodec:
    """Spans <-> ids for one vocabulary.

    Args:
        vocab: the shared vocabulary.
        audio_levels: RVQ levels written per audio frame (default: all of the vocab's).
            Fewer levels is an explicit option (a coarser, shorter audio layout); extra
            levels of an encoded clip are then dropped on encode.
    """

    def __init__(self, vocab: Vocab, audio_levels: int | None = None) -> None:
        self.vocab = vocab
        self.audio_levels = vocab.audio_levels if audio_levels is None else audio_levels
        if not 0 <= self.audio_levels <= vocab.audio_levels:
            raise SequenceError(
                f"audio_levels={audio_levels} but the vocabulary has {vocab.audio_levels} levels"
            )
        r = vocab.ranges
        self.t0, self.g0 = r["text"].start, r["image_grid"].start
        self.i0 = r["image"].start
        self.a0 = r["audio0"].start if vocab.audio_levels else 0

    # ---- per-modality layouts ----------------------------------------------------------
    def image_prefix(self, h: int, w: int) -> list[int]:
        """``<boi>`` and the two grid tokens that open an ``h`` x ``w`` image span."""
        g = self.vocab.image_max_grid
        if not self.vocab.image_codes:
            raise SequenceError("this vocabulary has no image range")
        if not (1 <= h <= g and 1 <= w <= g):
            raise SequenceError(f"image grid {h}x{w} outside 1..{g} (vocab image_max_grid)")
        return [BOI, self.g0 + h - 1, self.g0 + w - 1]

    def audio_offsets(self) -> np.ndarray:
        """``(Q,)`` first id of each audio level's range."""
        return self.a0 + np.arange(self.audio_levels) * self.vocab.audio_codes

    def _span_ids(self, span: Span) -> np.ndarray:
        c, v = span.codes, self.vocab
        if span.kind == "text":
            _check_codes(c, v.text_size, "text")
            return self.t0 + c
        if span.kind == "image":
            _check_codes(c, v.image_codes, "image")
            body = self.i0 + rearrange(c, "h w -> (h w)")
            return np.concatenate([self.image_prefix(*c.shape), body, [EOI]])
        if not self.audio_levels:
            raise SequenceError("this vocabulary/codec has no audio levels")
        if c.shape[0] < self.audio_levels:
            raise SequenceError(
                f"audio span has {c.shape[0]} levels, the layout needs {self.audio_levels}"
            )
        c = c[: self.audio_levels]
        _check_codes(c, v.audio_codes, "audio")
        body = rearrange(c + self.audio_offsets()[:, None], "q t -> (t q)")  # frame-major
        return np.concatenate([[BOA], body, [EOA]])

    # ---- spans -> ids ------------------------------------------------------------------
    def encode(
        self,
        spans: list[Span],
        bos: bool = True,
        eos: bool = True,
        loss: list[bool] | None = None,
    ) -> Encoded:
        """Spans -> :class:`Encoded`.

        Args:
            spans: the document's spans in order.
            bos, eos: wrap the document in ``<bos>`` / ``<eos>``.
            loss: per span, whether its tokens (markers included) are training targets;
                default all True. ``<eos>`` is a target; ``<bos>`` never is.
        """
        loss = [True] * len(spans) if loss is None else list(loss)
        if len(loss) != len(spans):
            raise SequenceError(f"{len(loss)} loss flags for {len(spans)} spans")
        parts, masks = [], []
        if bos:
            parts.append(np.array([BOS]))
            masks.append(np.array([False]))
        for span, flag in zip(spans, loss, strict=True):
            ids = self._span_ids(span)
            parts.append(ids)
            masks.append(np.full(len(ids), flag))
        if eos:
            parts.append(np.array([EOS]))
            masks.append(np.array([True]))
        ids = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        mask = np.concatenate(masks).astype(bool) if masks else np.zeros(0, bool)
        return Encoded(ids=ids, modality=self.vocab.modality_of(ids), loss_mask=mask)

    # ---- ids -> spans ------------------------------------------------------------------
    def decode(self, ids: Any, strict: bool = True) -> list[Span]:
        """Ids -> spans. ``strict`` raises on the first malformed span; else drops it."""
        report = self.decode_report(ids, strict=strict)
        return report.spans

    def decode_report(self, ids: Any, strict: bool = False) -> DecodeReport:
        """Ids -> :class:`DecodeReport` (spans plus messages for dropped spans)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        v, report = self.vocab, DecodeReport()
        if ids.size and (ids.min() < 0 or ids.max() >= v.size):
            pos = int(np.flatnonzero((ids < 0) | (ids >= v.size))[0])
            raise SequenceError(f"position {pos}: id {ids[pos]} outside [0, {v.size})")
        text_r = v.ranges["text"]
        i, n, text_run = 0, len(ids), []

        def fail(msg: str) -> None:
            if strict:
                raise SequenceError(msg)
            report.errors.append(msg)

        def flush_text() -> None:
            if text_run:
                report.spans.append(Span("text", np.array(text_run) - self.t0))
                text_run.clear()

        while i < n:
            tok = int(ids[i])
            if tok in text_r:
                text_run.append(tok)
                i += 1
                continue
            flush_text()
            if tok in (BOI, BOA):
                parse = self._parse_image if tok == BOI else self._parse_audio
                span, i, err = parse(ids, i)
                if err:
                    fail(err)
                elif span is not None:
                    report.spans.append(span)
            elif tok == BOS and i == 0 or tok in _CONTROL:
                i += 1
            elif tok == EOS:
                rest = ids[i + 1 :]
                if np.any(rest != PAD):
                    fail(f"position {i + 1}: tokens after <eos> (only <pad> may follow)")
                break
            else:
                fail(f"position {i}: id {tok} ({self._describe(tok)}) outside any span")
                i += 1
        flush_text()
        return report

    def _parse_image(self, ids: np.ndarray, start: int) -> tuple[Span | None, int, str]:
        """Parse the image span opening at ``start`` -> (span or None, next index, error)."""
        v = self.vocab
        grid_r, code_r = v.ranges["image_grid"], v.ranges["image"]
        end, closed = self._close(ids, start, EOI)
        if start + 2 >= end - closed:
            return None, end, f"position {start}: image span cut off before its grid tokens"
        gh, gw = int(ids[start + 1]), int(ids[start + 2])
        if gh not in grid_r or gw not in grid_r:
            got = f"{self._describe(gh)}, {self._describe(gw)}"
            return None, end, f"position {start + 1}: image span needs two grid tokens, got {got}"
        h, w = gh - grid_r.start + 1, gw - grid_r.start + 1
        body = ids[start + 3 : end - closed]
        if not closed:
            return (
                None,
                end,
                (
                    f"position {start}: image span {h}x{w} not closed by <eoi> "
                    f"({len(body)} of {h * w} codes)"
                ),
            )
        if len(body) != h * w:
            return (
                None,
                end,
                (f"position {start}: image span {h}x{w} has {len(body)} codes, needs {h * w}"),
            )
        bad = np.flatnonzero((body < code_r.start) | (body >= code_r.stop))
        if bad.size:
            p = start + 3 + int(bad[0])
            return None, end, f"position {p}: {self._describe(int(ids[p]))} inside an image span"
        codes = rearrange(body - code_r.start, "(h w) -> h w", h=h, w=w)
        return Span("image", codes), end, ""

    def _parse_audio(self, ids: np.ndarray, start: int) -> tuple[Span | None, int, str]:
        """Parse the audio span opening at ``start`` -> (span or None, next index, error)."""
        q = self.audio_levels
        end, closed = self._close(ids, start, EOA)
        body = ids[start + 1 : end - closed]
        if not closed:
            return (
                None,
                end,
                (f"position {start}: audio span not closed by <eoa> ({len(body)} codes)"),
            )
        if q == 0 or len(body) % q:
            return (
                None,
                end,
                (
                    f"position {start}: audio span of {len(body)} codes is not whole frames "
                    f"of {q} levels"
                ),
            )
        local = body - np.tile(self.audio_offsets(), len(body) // q)  # level = pos % q
        bad = np.flatnonzero((local < 0) | (local >= self.vocab.audio_codes))
        if bad.size:
            p = start + 1 + int(bad[0])
            return (
                None,
                end,
                (
                    f"position {p}: {self._describe(int(ids[p]))} where audio level "
                    f"{int(bad[0]) % q} was expected"
                ),
            )
        return Span("audio", rearrange(local, "(t q) -> q t", q=q)), end, ""

    @staticmethod
    def _close(ids: np.ndarray, start: int, closer: int) -> tuple[int, bool]:
        """(index just past the first ``closer`` after ``start``, found) or (len, False)."""
        hits = np.flatnonzero(ids[start + 1 :] == closer)
        return (start + 2 + int(hits[0]), True) if hits.size else (len(ids), False)

    def _describe(self, tok: int) -> str:
        if tok < len(self.vocab.specials):
            return self.vocab.specials[tok]
        for r in self.vocab.ranges.values():
            if tok in r:
                return f"{r.name} id {tok}"
        return f"id {tok}"


def _check_codes(codes: np.ndarray, size: int, kind: str) -> None:
    if size == 0:
        raise SequenceError(f"this vocabulary has no {kind} range")
    if codes.size and (codes.min() < 0 or codes.max() >= size):
        raise SequenceError(
            f"{kind} codes must lie in [0, {size}), got {codes.min()}..{codes.max()}"
        )


# ---- media level: documents <-> spans through the tokenizers ---------------------------
def encode_document(
    doc: Any, tokenizers: TokenizerSet, codec: SequenceCodec, media_codes: Any = None
) -> Encoded:
    """A validated document (``native_mm.documents.Document``) -> :class:`Encoded`.

    Media errors are re-raised naming the document's source line and id.

    Args:
        media_codes: optional ``(kind, path) -> codes | None`` lookup of media already
            encoded (corpora reuse one clip or image in many documents); a miss encodes.
    """
    spans, loss = [], []
    for k, seg in enumerate(doc.segments):
        try:
            codes = None if media_codes is None else media_codes(seg.kind, seg.value)
            if codes is None:
                codes = tokenizers[seg.kind].encode(seg.value)
        except ValueError as e:
            raise type(e)(f"{doc.source} (id {doc.id!r}) segment {k}: {e}") from None
        spans.append(Span(seg.kind, codes))
        loss.append(getattr(seg, "loss", True))
    return codec.encode(spans, loss=loss)


def decode_spans(spans: list[Span], tokenizers: TokenizerSet) -> list[Any]:
    """Spans -> media: ``str`` for text, ``PIL.Image.Image`` for images, ``Waveform``."""
    return [tokenizers[s.kind].decode(s.codes) for s in spans]
