"""Text tokenizer: sentencepiece BPE with byte fallback and an exact round trip.

Any Unicode string (Chinese, emoji, control characters, ``"\\x00"``, ``"\\r\\n"``, runs
of spaces, the empty string) encodes to piece ids ``(N,)`` and decodes back to the same
string. Three things make this exact:

- the model is trained with ``normalization_rule_name="identity"``,
  ``add_dummy_prefix=False`` and ``remove_extra_whitespaces=False``, so sentencepiece
  never rewrites the input, and ``byte_fallback=True``, so characters without a piece
  become their UTF-8 bytes (``<0x00>`` ... ``<0xFF>``) instead of ``<unk>``;
- sentencepiece writes spaces as the meta symbol U+2581 ("▁"), so a literal "▁" in
  the input would come back as a space. :meth:`TextTokenizer.encode` splits the input
  on "▁" and emits the literal's three byte pieces ``<0xE2><0x96><0x81>`` in between;
- :meth:`TextTokenizer.decode` does not call sentencepiece: each id maps to the bytes
  it stands for (a byte piece -> that byte; a normal piece -> its text with "▁" read as
  a space), the bytes are joined and UTF-8 decoded. Byte sequences that are not valid
  UTF-8 (possible only for generated ids) decode to U+FFFD.

The sentencepiece model has no ``<s>``/``</s>``/``<pad>`` pieces: the shared vocabulary
(``native_mm.vocab``) owns the specials. Piece 0 is sentencepiece's mandatory ``<unk>``,
never produced by :meth:`encode`.

Training uses sentencepiece's own trainer, fed by an iterator (``sentence_iterator``)
and written to memory (``model_writer``); see :func:`train_text_tokenizer` and the
``native-mm tokenizer train text`` verb (:func:`train_main`).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import sentencepiece as spm

from native_mm import cli_help, sources
from native_mm.io import sha256_bytes, write_bytes, write_json
from native_mm.tokenizers.base import MediaError, Tokenizer

META = "\u2581"  # sentencepiece's whitespace meta symbol "▁"
MODEL_FILE = "text.model"
CONFIG_FILE = "config.json"
# Strings that change under any normalisation, dummy prefix or whitespace cleanup; a
# loaded model must round-trip them exactly (see TextTokenizer._self_check).
_PROBES = ("  A\u00a0b\r\n\t ", "\uff21\ufb01\u2160 \u00e9 e\u0301", f"x{META}{META} y ", "")


class TextTokenizerError(MediaError):
    """A text model or text input that cannot be used; the message names file/input."""


@dataclasses.dataclass
class TextSpec:
    """How to train the text BPE (``tokenizers/text/*.yaml``)."""

    vocab_size: int = 1000  # sentencepiece pieces, incl. <unk> and the 256 byte pieces
    character_coverage: float = 0.9995  # share of characters that get their own piece
    inputs: list[str] = dataclasses.field(default_factory=list)  # text / .jsonl files or globs
    generators: list[str] = dataclasses.field(default_factory=list)  # "module:function"s -> lines
    max_lines: int = 0  # train on at most this many lines (0 = all), the first ones read
    max_line_bytes: int = 4096  # longer lines are cut into chunks (sentencepiece skips them)
    split_digits: bool = True  # every digit its own piece (numbers tokenize uniformly)
    allow_whitespace_only_pieces: bool = True  # pieces for runs of spaces (code indent)
    max_piece_length: int = 16  # longest piece, in characters
    hard_vocab_limit: bool = True  # False: a small corpus may give fewer than vocab_size
    seed: int = 0  # sentencepiece's random generator seed
    num_threads: int = 1  # trainer threads (recorded in the model file: part of its fingerprint)

    def __post_init__(self) -> None:
        if self.vocab_size < 258:
            raise ValueError(
                f"vocab_size={self.vocab_size}: need > 257 (<unk> + 256 byte pieces + pieces)"
            )
        if not 0.98 <= self.character_coverage <= 1.0:  # sentencepiece's own limits
            raise ValueError(f"character_coverage={self.character_coverage}: must be in [0.98, 1]")
        for name in ("max_lines", "max_line_bytes", "max_piece_length", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if isinstance(self.generators, str):
            self.generators = [self.generators]
        bad = [g for g in self.generators if not sources.is_ref(g)]
        if bad:
            raise ValueError(f"generators: {bad} are not 'package.module:function' references")


class TextTokenizer(Tokenizer):
    """Sentencepiece BPE with byte fallback; local codes are piece ids ``(N,)``.

    Args:
        model_proto: the serialized sentencepiece model (the bytes of ``text.model``).
        spec: the training spec, kept for the record (saved in ``config.json``).
        source: where the model came from, for error messages.
    """

    modality: ClassVar[str] = "text"

    def __init__(
        self, model_proto: bytes, spec: dict | None = None, source: str = "text model"
    ) -> None:
        self._proto = bytes(model_proto)
        self.spec = spec
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise TextTokenizerError(f"{source}: not a sentencepiece model ({e})") from None
        sp = self._sp
        n = sp.get_piece_size()
        # id -> the UTF-8 bytes it stands for (decode is a table lookup + join).
        table: list[bytes] = []
        byte_id: dict[int, int] = {}
        for i in range(n):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                value = int(piece[3:5], 16)  # "<0xAB>"
                byte_id[value] = i
                table.append(bytes([value]))
            elif sp.is_unknown(i):
                table.append("\ufffd".encode())
            elif sp.is_control(i):
                table.append(b"")
            else:
                table.append(piece.replace(META, " ").encode("utf-8"))
        if len(byte_id) != 256:
            raise TextTokenizerError(
                f"{source}: model has {len(byte_id)} byte pieces, needs all 256 "
                "(train with byte_fallback=True)"
            )
        if any(sp.is_control(i) for i in range(n)):
            raise TextTokenizerError(
                f"{source}: model has control pieces (<s>, </s>, ...); train with "
                "bos_id=eos_id=pad_id=-1 (the shared vocabulary owns the specials)"
            )
        meta_id = sp.piece_to_id(META)
        if sp.is_unknown(meta_id) or sp.is_byte(meta_id):
            raise TextTokenizerError(
                f"{source}: model has no {META!r} piece, so spaces would come back as "
                f"{META!r}; train with required_chars={META!r}"
            )
        self._table = table
        self._meta_ids = [byte_id[b] for b in META.encode("utf-8")]
        self._self_check(source)

    def _self_check(self, source: str) -> None:
        for probe in _PROBES:
            if self.decode(self.encode(probe)) != probe:
                raise TextTokenizerError(
                    f"{source}: model does not round-trip {probe!r} exactly; train it with "
                    "normalization_rule_name='identity', add_dummy_prefix=False, "
                    "remove_extra_whitespaces=False"
                )

    # ---- Tokenizer interface -------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, media: str) -> np.ndarray:
        """Text -> int64 piece ids ``(N,)``; ``decode(encode(s)) == s`` for every valid str.

        Raises:
            TextTokenizerError: ``media`` is not a str, or holds a lone surrogate.
        """
        if not isinstance(media, str):
            raise TextTokenizerError(f"text encode: expected str, got {type(media).__name__}")
        try:
            media.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TextTokenizerError(
                f"text encode: lone surrogate {media[e.start]!r} at index {e.start} "
                "is not valid Unicode and cannot be UTF-8 encoded"
            ) from None
        # Encode line by line (one batch call): a trained model has no piece holding a line
        # break (training splits on them), so the pieces are the same as for the whole
        # string, and sentencepiece is ~4x faster on many short inputs than on one long one.
        lines: list[str] = []
        for k, part in enumerate(media.split(META)):
            if k:
                lines.append(META)  # placeholder: the literal "▁" as its 3 UTF-8 byte pieces
            lines += part.splitlines(keepends=True)
        pieces = self._sp.encode(lines, out_type=int)
        if META in media:  # no line holds a "▁" (split on it above): only placeholders do
            pieces = [
                self._meta_ids if x == META else p for x, p in zip(lines, pieces, strict=True)
            ]
        return np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64)

    def decode(self, codes: np.ndarray | Iterable[int]) -> str:
        """Piece ids ``(N,)`` -> text. Invalid UTF-8 (generated ids only) becomes U+FFFD.

        Raises:
            TextTokenizerError: ``codes`` is not 1-D or holds ids outside the model.
        """
        codes = np.asarray(codes)
        if codes.ndim != 1:
            raise TextTokenizerError(
                f"text decode: expected codes of shape (N,), got {codes.shape}"
            )
        if codes.size == 0:
            return ""
        if not np.issubdtype(codes.dtype, np.integer):
            raise TextTokenizerError(f"text decode: expected integer codes, got {codes.dtype}")
        if codes.min() < 0 or codes.max() >= len(self._table):
            bad = codes[(codes < 0) | (codes >= len(self._table))][0]
            raise TextTokenizerError(
                f"text decode: piece id {int(bad)} outside [0, {len(self._table)})"
            )
        table = self._table
        return b"".join([table[i] for i in codes.tolist()]).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """sha256 of the model file's bytes."""
        return sha256_bytes(self._proto)

    def save(self, directory: str | Path) -> None:
        """Write ``text.model`` and ``config.json`` (atomically) into ``directory``."""
        directory = Path(directory)
        write_bytes(directory / MODEL_FILE, self._proto)
        write_json(
            directory / CONFIG_FILE,
            {
                "modality": self.modality,
                "model_file": MODEL_FILE,
                "model_sha256": self.fingerprint(),
                "vocab_size": self.codebook_size,
                "spec": self.spec,
                "fingerprint": self.fingerprint(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        """Load a directory written by :meth:`save` (``config.json`` is checked if present)."""
        directory = Path(directory)
        model_path = directory / MODEL_FILE
        meta_path = directory / CONFIG_FILE
        meta: dict = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TextTokenizerError(f"{meta_path}: malformed tokenizer config ({e})") from None
            if meta.get("modality", "text") != cls.modality:
                raise TextTokenizerError(
                    f"{meta_path}: holds a {meta.get('modality')!r} tokenizer, not 'text'"
                )
        if not model_path.is_file():
            raise TextTokenizerError(f"{model_path}: missing text tokenizer model")
        proto = model_path.read_bytes()
        want = meta.get("model_sha256")
        if want is not None and sha256_bytes(proto) != want:
            raise TextTokenizerError(
                f"{model_path}: checksum mismatch (config.json records sha256 {want}, file has "
                f"{sha256_bytes(proto)}); the file is corrupt or was replaced"
            )
        return cls(proto, spec=meta.get("spec"), source=str(model_path))

    # ---- helpers ---------------------------------------------------------------------------
    def pieces(self, text: str) -> list[str]:
        """The pieces ``encode(text)`` produces, as strings (for inspection)."""
        return [self._sp.id_to_piece(int(i)) for i in self.encode(text)]

    def id_to_piece(self, piece_id: int) -> str:
        return self._sp.id_to_piece(int(piece_id))


# ---- training ------------------------------------------------------------------------------
def _lines(texts: Iterable[str], max_line_bytes: int) -> Iterator[str]:
    """Split texts into non-empty lines; cut lines too long for sentencepiece's trainer."""
    max_chars = max(1, max_line_bytes // 4)  # a character is at most 4 UTF-8 bytes
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if len(line.encode("utf-8", errors="replace")) <= max_line_bytes:
                yield line
            else:
                for i in range(0, len(line), max_chars):
                    yield line[i : i + max_chars]


def train_text_tokenizer(
    spec: TextSpec, texts: Iterable[str], verbose: bool = False
) -> TextTokenizer:
    """Train a sentencepiece BPE (byte fallback, identity normalisation) on ``texts``.

    Args:
        spec: the training spec; ``spec.inputs``/``spec.generators`` are NOT read here (see
            :func:`iter_spec_texts`), only the trainer settings.
        texts: strings (each may hold several lines; blank lines are ignored). Lines with
            lone surrogates are skipped.
        verbose: let sentencepiece log its progress (merges) to stderr.

    Raises:
        ValueError: no training text, or sentencepiece refused the settings (e.g. a
            vocab_size larger than the corpus supports; the message gives the maximum).
    """
    counts = {"lines": 0, "skipped": 0}

    def sentences() -> Iterator[str]:
        for line in _lines(texts, spec.max_line_bytes):
            if spec.max_lines and counts["lines"] >= spec.max_lines:
                return
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                counts["skipped"] += 1
                continue
            counts["lines"] += 1
            yield line

    model = io.BytesIO()
    spm.set_random_generator_seed(spec.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=spec.vocab_size,
            character_coverage=spec.character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            # Without a "▁" piece sentencepiece byte-encodes spaces as the bytes of "▁",
            # indistinguishable from a literal "▁": force the piece whatever the coverage.
            required_chars=META,
            split_digits=spec.split_digits,
            allow_whitespace_only_pieces=spec.allow_whitespace_only_pieces,
            max_sentencepiece_length=spec.max_piece_length,
            max_sentence_length=spec.max_line_bytes + 16,
            hard_vocab_limit=spec.hard_vocab_limit,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=max(1, spec.num_threads),
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as e:
        if counts["lines"] == 0:
            raise ValueError(
                "text tokenizer training: no training text (all inputs empty)"
            ) from None
        raise ValueError(f"text tokenizer training failed: {e}") from None
    if counts["lines"] == 0:
        raise ValueError("text tokenizer training: no training text (all inputs empty)")
    tok = TextTokenizer(model.getvalue(), spec=dataclasses.asdict(spec), source="trained model")
    tok.train_stats = dict(counts)  # lines used / skipped, for the train log
    return tok


def _expand_inputs(patterns: Iterable[str], base: Path | None) -> list[Path]:
    """Files named by paths/globs; relative ones against ``base`` (the spec's directory)."""
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if base is not None and not p.is_absolute():
            p = base / p
        if glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise ValueError(f"input {pattern!r}: glob matched no files")
            files += [m for m in matches if m.is_file()]
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"input {pattern!r}: no such file ({p})")
    return files


def _read_text_file(path: Path, stats: dict) -> Iterator[str]:
    """Lines of a UTF-8 text file; lines that are not valid UTF-8 are skipped and counted."""
    with open(path, "rb") as f:
        for raw in f:
            stats["bytes"] += len(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                stats["bad_lines"] += 1


def iter_spec_texts(
    spec: TextSpec, files: list[Path], stats: dict | None = None, progress: bool = False
) -> Iterator[str]:
    """Texts for training: built-in corpora, then each file (``.jsonl`` = documents JSONL,
    whose text segments are used; anything else = plain UTF-8 text)."""
    from native_mm.documents import SkipReport, read_documents

    stats = stats if stats is not None else {}
    stats.setdefault("bytes", 0)
    stats.setdefault("bad_lines", 0)
    stats.setdefault("skipped_documents", 0)
    for ref in spec.generators:  # zero-argument callables yielding text
        yield from sources.resolve(ref)()
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(f.stat().st_size for f in files)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="text corpus", disable=None)
    try:
        for path in files:
            if path.suffix == ".jsonl":
                report = SkipReport()
                for doc in read_documents(path, on_error="skip", report=report, check_media=False):
                    yield from (s.value for s in doc.segments if s.kind == "text")
                stats["skipped_documents"] += report.skipped
                stats["bytes"] += path.stat().st_size
                if bar is not None:
                    bar.update(path.stat().st_size)
            else:
                before = stats["bytes"]
                for line in _read_text_file(path, stats):
                    yield line
                    if bar is not None and stats["bytes"] - before > 1 << 20:
                        bar.update(stats["bytes"] - before)
                        before = stats["bytes"]
                if bar is not None:
                    bar.update(stats["bytes"] - before)
    finally:
        if bar is not None:
            bar.close()


def train_main(argv: list[str] | None = None, prog: str = "native-mm tokenizer train text") -> int:
    """``native-mm tokenizer train text --config SPEC.yaml --out DIR [--input F ...] [k=v ...]``."""
    from native_mm.tokenizers.trainer import load_spec

    parser = cli_help.parser(
        prog,
        "Train the sentencepiece BPE text tokenizer. Writes DIR/text.model, "
        "DIR/config.json and DIR/train_log.json.",
    )
    parser.add_argument("--config", type=Path, default=Path("tokenizers/text/default.yaml"),
                        help="spec YAML (tokenizers/text/*.yaml)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--input",
        action="append",
        default=None,
        help="text or documents .jsonl file/glob (repeatable); replaces the spec's `inputs` "
        "(relative to the current directory; the spec's own are relative to the spec file)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show sentencepiece's training log (merges)"
    )
    parser.add_argument("overrides", nargs="*", help="spec overrides, key=value")
    args = parser.parse_args(argv)
    spec = load_spec(TextSpec, args.config, args.overrides)
    if args.input:
        files = _expand_inputs(args.input, None)
    else:
        files = _expand_inputs(spec.inputs, args.config.parent)
    if not files and not spec.generators:
        raise ValueError(f"{args.config}: no inputs (set `inputs`/`generators` or pass --input)")
    stats: dict = {}
    t0 = time.perf_counter()
    texts = iter_spec_texts(spec, files, stats, progress=True)
    tok = train_text_tokenizer(spec, texts, verbose=args.verbose)
    seconds = time.perf_counter() - t0
    tok.save(args.out)
    sample = "The digit 7 is written seven. 数字 7 😀"
    log = {
        "config": str(args.config),
        "inputs": [str(f) for f in files],
        "generators": spec.generators,
        "spec": dataclasses.asdict(spec),
        "vocab_size": tok.codebook_size,
        "fingerprint": tok.fingerprint(),
        "train_seconds": round(seconds, 3),
        "input_bytes": stats.get("bytes", 0),
        "skipped_bad_utf8_lines": stats.get("bad_lines", 0),
        "skipped_documents": stats.get("skipped_documents", 0),
        "lines": tok.train_stats["lines"],
        "skipped_lone_surrogate_lines": tok.train_stats["skipped"],
        "sample": {"text": sample, "pieces": tok.pieces(sample)},
    }
    write_json(args.out / "train_log.json", log)
    print(
        f"text tokenizer: {tok.codebook_size} pieces, trained in {seconds:.1f}s on "
        f"{len(files)} file(s) + generators {spec.generators} -> {args.out} "
        f"(fingerprint {tok.fingerprint()[:12]})",
        file=sys.stderr,
    )
    return 0
