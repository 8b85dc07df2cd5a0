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

from native_mm.layouts import Layout, LayoutError, close
from native_mm.vocab import BOA, BOI, BOS, EOA, EOI, EOS, PAD, SEP, UNCOND, Vocab

if TYPE_CHECKING:  # tokenizers import sequence-free code only; keep the arrow one-way
    from native_mm.tokenizers.base import TokenizerSet

KINDS = ("text", "image", "audio", "special")  # special: added specials (role markers)


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
        want = 1 if self.kind in ("text", "special") else 2
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
    """Spans <-> ids for one vocabulary and one :class:`~native_mm.layouts.Layout`.

    Args:
        vocab: the shared vocabulary.
        layout: the media layouts (None: the vocabulary's defaults, all audio levels);
            kinds the layout leaves open are filled with the defaults.
    """

    def __init__(self, vocab: Vocab, layout: Layout | None = None) -> None:
        self.vocab = vocab
        try:
            self.layout = (layout or Layout()).resolved(vocab)
        except LayoutError as e:
            raise SequenceError(str(e)) from None
        self.t0 = vocab.ranges["text"].start

    @property
    def audio_levels(self) -> int:
        """RVQ levels a frame in this layout (0 when the vocabulary has no audio)."""
        return self.layout.audio.levels if self.layout.audio else 0

    def _span_ids(self, span: Span) -> np.ndarray:
        c, v = span.codes, self.vocab
        if span.kind == "special":  # codes are the ids themselves: added specials only
            added = v.ranges.get("added")
            if added is None or not all(int(t) in added for t in c):
                raise SequenceError(f"special span ids {c.tolist()} are not added specials "
                                    f"of this vocabulary ({list(v.added)})")  # fmt: skip
            return c
        if span.kind == "text":
            _check_codes(c, v.text_size, "text")
            return self.t0 + c
        size = v.image_codes if span.kind == "image" else v.audio_codes
        _check_codes(c, size, span.kind)
        try:
            return self.layout.media(span.kind).encode(c, v)
        except LayoutError as e:
            raise SequenceError(str(e)) from None

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
                kind = "image" if tok == BOI else "audio"
                media = getattr(self.layout, kind)
                if media is None:
                    fail(f"position {i}: an {kind} span, but this vocabulary has no {kind} range")
                    i = close(ids, i, EOI if tok == BOI else EOA)[0]
                    continue
                codes, i, err = media.decode(ids, i, v)
                if err:
                    fail(err)
                else:
                    report.spans.append(Span(kind, codes))
            elif tok == BOS and i == 0 or tok in _CONTROL:
                i += 1
            elif v.added and tok in v.ranges["added"]:  # a role marker or <eot>
                report.spans.append(Span("special", np.array([tok])))
                i += 1
            elif tok == EOS:
                rest = ids[i + 1 :]
                if np.any(rest != PAD):
                    fail(f"position {i + 1}: tokens after <eos> (only <pad> may follow)")
                break
            else:
                fail(f"position {i}: id {tok} ({v.describe(tok)}) outside any span")
                i += 1
        flush_text()
        return report


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
        if seg.kind == "special":
            spans.append(Span("special", [special_id(tokenizers.vocab, seg.value, doc, k)]))
            loss.append(seg.loss)
            continue
        try:
            codes = None if media_codes is None else media_codes(seg.kind, seg.value)
            if codes is None:
                codes = tokenizers[seg.kind].encode(seg.value)
        except ValueError as e:
            raise type(e)(f"{doc.source} (id {doc.id!r}) segment {k}: {e}") from None
        spans.append(Span(seg.kind, codes))
        loss.append(getattr(seg, "loss", True))
    return codec.encode(spans, loss=loss)


def special_id(vocab: Vocab, name: str, doc: Any, k: int) -> int:
    """The id of an added special a document uses, or an error saying how to add it."""
    if name not in vocab.added:
        raise SequenceError(
            f"{doc.source} (id {doc.id!r}) segment {k}: the tokenizer set has no {name} token; "
            "make a chat set: native-mm tokenizer set --from SET --add-specials "
            "'<user>,<assistant>,<eot>'"
        )
    return vocab.special_id(name)


def decode_spans(spans: list[Span], tokenizers: TokenizerSet) -> list[Any]:
    """Spans -> media: ``str`` for text, ``PIL.Image.Image`` for images, ``Waveform``;
    a special span (a role marker) -> its name, e.g. ``"<user>"``."""
    return [tokenizers.vocab.describe(int(s.codes[0])) if s.kind == "special"
            else tokenizers[s.kind].decode(s.codes) for s in spans]  # fmt: skip
