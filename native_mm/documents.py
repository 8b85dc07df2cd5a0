"""Documents: the JSONL corpus schema, its validation, and the ``native-mm validate`` verb.

One document per line::

    {"id": "doc-1", "segments": [{"text": "a handwritten"}, {"image": "img/7.png"},
                                 {"audio": "wav/seven.wav", "loss": false}]}

- ``id``: a non-empty string, unique within the file.
- ``segments``: a non-empty list; each segment has exactly one kind key (``text``,
  ``image`` or ``audio``) and optionally ``"loss": false`` (the segment is context only:
  no loss on its tokens). Other top-level keys are allowed and ignored (metadata).
- Instead of ``segments``, a conversation has ``turns``: ``[{"role": "user", "segments":
  [...]}, {"role": "assistant", "segments": [...]}, ...]``. It becomes the turn template
  ``<user> ... <eot> <assistant> ... <eot> ...`` (the specials of
  :data:`native_mm.vocab.CHAT_SPECIALS`, which the tokenizer set must hold), with the loss
  on the assistant's turns only: their segments and the ``<eot>`` that ends each.
- Media paths are relative to the directory holding the JSONL file (the corpus root).
  Absolute paths, ``..`` escapes and symlinks resolving outside the root are refused,
  so a corpus cannot make the pipeline read arbitrary files.

Every problem is a :class:`DocumentError` naming file, line and field. With
``on_error="skip"`` bad records are counted in a :class:`SkipReport` (reason -> count)
and reading continues, so a dirty corpus is processed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from native_mm import cli_help

SEGMENT_KINDS: tuple[str, ...] = ("text", "image", "audio")
MEDIA_KINDS: tuple[str, ...] = ("image", "audio")
ROLES: tuple[str, ...] = ("user", "assistant")
EOT = "<eot>"  # ends every turn (vocab.CHAT_SPECIALS)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One span of a document.

    Args:
        kind: "text", "image", "audio", or "special" (a turn's role marker or ``<eot>``).
        value: the text itself, the resolved (absolute) path of the media file, or the
            special token's name.
        loss: False when the segment is context only (its tokens get no loss).
    """

    kind: str
    value: str
    loss: bool = True


@dataclasses.dataclass
class Document:
    """A validated document; ``source`` is ``"file.jsonl:LINE"``."""

    id: str
    segments: list[Segment]
    source: str


class DocumentError(ValueError):
    """A bad record: the message names file, line and field; ``reason`` is a short key."""

    def __init__(
        self, path: str | Path, line: int | None, field: str | None, message: str, reason: str
    ) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        self.source = f"{path}:{line}" if line is not None else str(path)
        where = f" field {field!r}:" if field else ""
        super().__init__(f"{self.source}:{where} {message}")


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped records by reason, plus their messages (the first ``max_messages``).

    Also counts what was kept, so one report summarises a whole pass over a corpus.
    """

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    messages: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, msg)
    reasons: list[str] = dataclasses.field(default_factory=list)  # reason of each message
    max_messages: int = 1000  # cap on stored messages; counts are always complete
    documents: int = 0  # documents kept
    segments: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, error: DocumentError) -> None:
        self.counts[error.reason] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append((error.source, str(error)))
            self.reasons.append(error.reason)

    def keep(self, doc: Document) -> None:
        self.documents += 1
        self.segments.update(s.kind for s in doc.segments)

    def as_dict(self) -> dict:
        """JSON-able form for run reports."""
        return {
            "documents": self.documents,
            "segments": dict(self.segments),
            "skipped": self.skipped,
            "reasons": dict(sorted(self.counts.items())),
            "messages": [list(m) for m in self.messages],
        }

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        lines = [f"documents: {self.documents}"]
        kinds = ", ".join(f"{k} {self.segments.get(k, 0)}" for k in SEGMENT_KINDS)
        lines.append(f"segments: {sum(self.segments.values())} ({kinds})")
        lines.append(f"skipped: {self.skipped}")
        for reason, n in sorted(self.counts.items()):
            lines.append(f"  {reason}: {n}")
        return "\n".join(lines)


def _surrogate(s: str) -> int | None:
    """Index of the first lone surrogate in ``s`` (not UTF-8 encodable), else None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


class _Validator:
    """Validates one JSONL file's records; keeps the seen ids for duplicate detection."""

    def __init__(self, path: Path, check_media: bool, open_media: bool = False) -> None:
        self.path, self.open_media = path, open_media
        self.root = path.parent.resolve()
        self.real_root = Path(os.path.realpath(self.root))
        self.check_media = check_media
        self.seen: dict[str, int] = {}

    def error(self, line: int, field: str | None, message: str, reason: str) -> DocumentError:
        return DocumentError(self.path, line, field, message, reason)

    def parse(self, raw: bytes, line: int) -> Document | None:
        """One raw line -> a Document (None for a blank line); raises DocumentError."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(
                line, None, f"invalid UTF-8 at byte {e.start} ({e.reason})", "invalid_utf8"
            ) from None
        if not text.strip():
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise self.error(
                line, None, f"malformed JSON: {e.msg} at column {e.colno}", "malformed_json"
            ) from None
        except (ValueError, RecursionError) as e:  # e.g. huge integers, absurd nesting
            raise self.error(
                line, None, f"malformed JSON: {type(e).__name__}: {str(e)[:200]}", "malformed_json"
            ) from None
        if not isinstance(obj, dict):
            raise self.error(
                line, None, f"expected a JSON object, got {type(obj).__name__}", "not_an_object"
            )
        doc_id = self.check_id(obj, line)
        if "turns" in obj and "segments" in obj:
            raise self.error(line, "turns", "a document has segments or turns, not both",
                             "bad_turns")  # fmt: skip
        if "turns" in obj:
            segments = self.turns(obj["turns"], line)
        elif "segments" not in obj:
            raise self.error(line, "segments", "missing required field", "missing_field")
        else:
            segments = self.segments(obj["segments"], line, "segments")
        if not segments or all(s.kind == "text" and not s.value for s in segments):
            raise self.error(
                line, "segments", "empty document (no segments with content)", "empty_document"
            )
        if doc_id in self.seen:
            raise self.error(
                line,
                "id",
                f"duplicate id {doc_id!r} (first seen on line {self.seen[doc_id]})",
                "duplicate_id",
            )
        self.seen[doc_id] = line
        return Document(id=doc_id, segments=segments, source=f"{self.path}:{line}")

    def segments(self, raw: Any, line: int, field: str) -> list[Segment]:
        if not isinstance(raw, list):
            raise self.error(line, field, f"expected a list, got {type(raw).__name__}",
                             "bad_segments")  # fmt: skip
        return [self.segment(s, line, f"{field}[{i}]") for i, s in enumerate(raw)]

    def turns(self, raw: Any, line: int) -> list[Segment]:
        """A conversation -> the turn template's segments, loss on the assistant's turns."""
        if not isinstance(raw, list) or not raw:
            raise self.error(line, "turns", "expected a non-empty list of turns", "bad_turns")
        out = []
        for i, turn in enumerate(raw):
            field = f"turns[{i}]"
            role = turn.get("role") if isinstance(turn, dict) else None
            if role not in ROLES:
                raise self.error(line, f"{field}.role", f"must be one of {list(ROLES)}, got "
                                 f"{role!r}", "bad_turns")  # fmt: skip
            segs = self.segments(turn.get("segments"), line, f"{field}.segments")
            mine = role == "assistant"  # the model's own words: the only training targets
            out.append(Segment("special", f"<{role}>", loss=False))
            out += [dataclasses.replace(s, loss=mine and s.loss) for s in segs]
            out.append(Segment("special", EOT, loss=mine))
        if not any(s.value == "<assistant>" for s in out):
            raise self.error(line, "turns", "no assistant turn (nothing to learn)", "bad_turns")
        return out

    def check_id(self, obj: dict, line: int) -> str:
        if "id" not in obj:
            raise self.error(line, "id", "missing required field", "missing_field")
        doc_id = obj["id"]
        if not isinstance(doc_id, str) or not doc_id:
            raise self.error(line, "id", f"must be a non-empty string, got {doc_id!r}", "bad_id")
        if (pos := _surrogate(doc_id)) is not None:
            raise self.error(
                line, "id", f"lone surrogate at index {pos} (not valid Unicode)", "lone_surrogate"
            )
        return doc_id

    def segment(self, seg: Any, line: int, field: str) -> Segment:
        if not isinstance(seg, dict):
            raise self.error(
                line, field, f"expected an object, got {type(seg).__name__}", "bad_segment"
            )
        loss = seg.get("loss", True)
        if not isinstance(loss, bool):
            raise self.error(line, f"{field}.loss", f"must be true/false, got {loss!r}", "bad_loss")
        keys = [k for k in seg if k != "loss"]
        kinds = [k for k in keys if k in SEGMENT_KINDS]
        unknown = [k for k in keys if k not in SEGMENT_KINDS]
        if unknown:
            raise self.error(
                line,
                f"{field}.{unknown[0]}",
                f"unknown segment kind {unknown[0]!r}; expected one of {list(SEGMENT_KINDS)}",
                "unknown_kind",
            )
        if len(kinds) != 1:
            what = "no kind" if not kinds else f"two kinds {kinds}"
            raise self.error(
                line,
                field,
                f"a segment needs exactly one of {list(SEGMENT_KINDS)}, got {what}",
                "bad_segment",
            )
        kind = kinds[0]
        value = seg[kind]
        if not isinstance(value, str):
            raise self.error(
                line, f"{field}.{kind}", f"must be a string, got {type(value).__name__}",
                f"bad_{kind}",
            )  # fmt: skip
        if (pos := _surrogate(value)) is not None:
            raise self.error(
                line,
                f"{field}.{kind}",
                f"lone surrogate at index {pos} (not valid Unicode)",
                "lone_surrogate",
            )
        if kind in MEDIA_KINDS:
            value = self.media_path(value, line, f"{field}.{kind}")
            if self.open_media:
                problem = media_header_problem(kind, value)
                if problem:
                    raise self.error(line, f"{field}.{kind}", f"{value}: {problem[1]}", problem[0])
        return Segment(kind=kind, value=value, loss=loss)

    def media_path(self, rel: str, line: int, field: str) -> str:
        """Resolve a media path against the corpus root, refusing escapes."""
        if not rel:
            raise self.error(line, field, "empty path", "bad_path")
        if "\x00" in rel:
            raise self.error(line, field, "path contains a NUL character", "bad_path")
        if os.path.isabs(rel) or Path(rel).is_absolute() or rel.startswith(("/", "\\")):
            raise self.error(
                line, field, f"absolute path {rel!r} refused (paths are relative to "
                f"{self.root})", "path_escape",
            )  # fmt: skip
        full = os.path.normpath(self.root / rel)
        if os.path.commonpath([full, str(self.root)]) != str(self.root):
            raise self.error(
                line, field, f"path {rel!r} escapes the corpus directory {self.root}",
                "path_escape",
            )  # fmt: skip
        real = os.path.realpath(full)
        if os.path.commonpath([real, str(self.real_root)]) != str(self.real_root):
            raise self.error(
                line, field, f"path {rel!r} is a symlink to {real}, outside the corpus "
                f"directory {self.root}", "path_escape",
            )  # fmt: skip
        if self.check_media and not os.path.isfile(real):
            raise self.error(
                line, field, f"media file {full} not found (or not a file)", "missing_media"
            )
        return full


def media_header_problem(kind: str, path: str) -> tuple[str, str] | None:
    """``(reason, message)`` if ``tokenize`` would skip this media file, judged from its
    header (and, for PNG, its chunk checksums): empty, unreadable, truncated, no samples,
    longer than the audio tokenizer's limit. None when it looks fine."""
    if os.path.getsize(path) == 0:
        return "bad_media", f"empty (zero-byte) {kind} file"
    if kind == "image":
        import warnings

        from PIL import Image

        from native_mm.tokenizers.image import DEFAULT_MAX_PIXELS

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sized below
                with Image.open(path) as img:
                    w, h = img.size
                    img.verify()  # headers and chunk checksums, without decoding the pixels
        except Exception as e:  # noqa: BLE001 -- PIL raises many types for a bad file
            return "bad_media", f"not a readable image ({type(e).__name__}: {e})"
        if w * h > DEFAULT_MAX_PIXELS:
            return "bad_media", f"{w}x{h} image exceeds max_pixels={DEFAULT_MAX_PIXELS}"
        return None
    import soundfile as sf

    from native_mm.tokenizers.audio import DEFAULT_MAX_SECONDS

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 -- libsndfile raises several types
        return "bad_media", f"not a readable audio file ({type(e).__name__}: {e})"
    if info.frames <= 0 or info.samplerate <= 0:
        return "bad_media", "no audio samples"
    if info.frames / info.samplerate > DEFAULT_MAX_SECONDS:
        seconds = info.frames / info.samplerate
        return (
            "media_too_long",
            f"{seconds:.0f} s of audio, over the {DEFAULT_MAX_SECONDS:g} s limit",
        )
    return None


def read_documents(
    path: str | Path,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_media: bool = True,
    progress: bool = False,
    open_media: bool = False,
) -> Iterator[Document]:
    """Yield the valid documents of a JSONL file.

    Args:
        path: the JSONL file; media paths inside are relative to its directory.
        on_error: "raise" raises :class:`DocumentError` on the first bad record;
            "skip" skips it and counts it in ``report``.
        report: collects kept/skipped counts (a fresh one is used if None).
        check_media: check that media files exist (path safety is always checked).
        progress: show a progress bar over the file's bytes (on a terminal).
        open_media: also read each media file's header (:func:`media_header_problem`),
            predicting what ``tokenize`` would skip (``validate`` does).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    report = report if report is not None else SkipReport()
    if not path.is_file():
        raise DocumentError(path, None, None, "no such documents file", "missing_file")
    validator = _Validator(path, check_media, open_media and check_media)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None
        )
    try:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if bar is not None:
                    bar.update(len(raw))
                try:
                    doc = validator.parse(raw, line_no)
                except DocumentError as e:
                    if on_error == "raise":
                        raise
                    report.add(e)
                    continue
                if doc is not None:
                    report.keep(doc)
                    yield doc
    finally:
        if bar is not None:
            bar.close()


def main(argv: list[str] | None = None, prog: str = "native-mm validate") -> int:
    """``native-mm validate FILE.jsonl ...``: summarise a corpus; exit 1 if any record is bad."""
    parser = cli_help.parser(prog, "Check documents JSONL files and report every bad record.")
    parser.add_argument("files", nargs="+", type=Path, help="documents JSONL file(s)")
    parser.add_argument(
        "--no-media-check", action="store_true", help="do not check that media files exist"
    )
    parser.add_argument(
        "--no-media",
        action="store_true",
        help="do not open media files (by default each one's header is read: format, size, "
        "rate, channels, duration; what tokenize would skip is reported)",
    )
    parser.add_argument(
        "--show", type=int, default=20, help="print at most this many bad-record messages"
    )
    args = parser.parse_args(argv)
    report = SkipReport()
    for path in args.files:
        for _ in read_documents(
            path, on_error="skip", report=report, check_media=not args.no_media_check,
            progress=True, open_media=not args.no_media,
        ):  # fmt: skip
            pass
    print(report.summary())
    if report.skipped:
        print(f"bad records (first {min(args.show, len(report.messages))}):")
        for _, message in report.messages[: args.show]:
            print(f"  {message}")
        return 1
    return 0
