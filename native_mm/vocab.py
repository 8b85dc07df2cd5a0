"""The shared vocabulary: one id space for specials, text, image and audio codes.

Layout (contiguous ranges, decided once when a tokenizer set is built)::

    [0, S)                          specials  <pad> <bos> <eos> <boi> <eoi> <boa> <eoa> ...
    [T0, T0 + V_text)               text pieces (sentencepiece ids, offset by T0)
    [G0, G0 + max_grid)             image grid-size tokens: value g in 1..max_grid
    [I0, I0 + K_img)                image VQ codes
    [A0 + q*K_aud, A0 + (q+1)*K_aud) audio RVQ level q codes, one range per level

The vocabulary is plain data: it imports nothing else from the package, so every
layer (tokenizers, model, training, generation) may depend on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Fixed special tokens; their ids are their positions. Reserved slots keep room for
# new specials without shifting every other range (which would invalidate checkpoints).
SPECIALS: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<sep>",
    "<uncond>", "<reserved9>", "<reserved10>", "<reserved11>",
    "<reserved12>", "<reserved13>", "<reserved14>", "<reserved15>",
)  # fmt: skip
PAD, BOS, EOS, BOI, EOI, BOA, EOA, SEP, UNCOND = range(9)
# The turn template's specials (documents with "turns"), added to a set for a chat stage:
# `native-mm tokenizer set --from SET --add-specials "<user>,<assistant>,<eot>"`.
CHAT_SPECIALS: tuple[str, ...] = ("<user>", "<assistant>", "<eot>")

# Modality ids used by the vectorised lookup (a uint8 per token id).
MODALITIES: tuple[str, ...] = ("special", "text", "image", "audio")
SPECIAL, TEXT, IMAGE, AUDIO = range(4)

MANIFEST_VERSION = 1


class VocabError(ValueError):
    """An inconsistent vocabulary, or a manifest that does not match its tokenizers."""


@dataclass(frozen=True)
class Range:
    """A half-open id range ``[start, start + size)``."""

    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __contains__(self, token_id: int) -> bool:
        return self.start <= token_id < self.stop


@dataclass(frozen=True)
class Vocab:
    """Sizes of each modality's code space; the id ranges are derived from them.

    Args:
        text_size: number of text pieces (sentencepiece vocabulary size).
        image_codes: image codebook size (0 = no image tokenizer).
        audio_codes: codes per audio RVQ level (0 = no audio tokenizer).
        audio_levels: number of RVQ levels that get their own range.
        image_max_grid: largest image grid side (in codes) that shape tokens can express.
        added: special tokens added after training began (e.g. chat role markers), in an
            ``added`` range after every other one, so no earlier id moves and a model
            grows into them (:meth:`grows_into`).
    """

    text_size: int
    image_codes: int = 0
    audio_codes: int = 0
    audio_levels: int = 0
    image_max_grid: int = 64
    specials: tuple[str, ...] = SPECIALS
    added: tuple[str, ...] = ()
    ranges: dict[str, Range] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("text_size", "image_codes", "audio_codes", "audio_levels", "image_max_grid"):
            if getattr(self, name) < 0:
                raise VocabError(f"vocab: {name} must be >= 0, got {getattr(self, name)}")
        if self.text_size < 1:
            raise VocabError("vocab: text_size must be >= 1 (every sequence can hold text)")
        if (self.audio_codes == 0) != (self.audio_levels == 0):
            raise VocabError(
                f"vocab: audio_codes={self.audio_codes} and audio_levels={self.audio_levels} "
                "must both be zero or both be positive"
            )
        if len(set(self.specials)) != len(self.specials):
            raise VocabError(f"vocab: duplicate special tokens in {self.specials}")
        if tuple(self.specials[: len(SPECIALS)]) != SPECIALS:
            raise VocabError("vocab: the first specials must be the fixed SPECIALS in order")
        names = [*self.specials, *self.added]
        bad = [a for a in self.added if not (a.startswith("<") and a.endswith(">") and len(a) > 2)]
        if bad or len(set(names)) != len(names):
            raise VocabError(f"vocab: added specials {list(self.added)} must be new, unique "
                             "names written <like_this>")  # fmt: skip
        sizes = [
            ("special", len(self.specials)),
            ("text", self.text_size),
            ("image_grid", self.image_max_grid if self.image_codes else 0),
            ("image", self.image_codes),
        ] + [(f"audio{q}", self.audio_codes) for q in range(self.audio_levels)]
        if self.added:
            sizes.append(("added", len(self.added)))
        ranges, start = {}, 0
        for name, size in sizes:
            ranges[name] = Range(name, start, size)
            start += size
        object.__setattr__(self, "ranges", ranges)

    # ---- sizes and offsets -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Total number of ids (the model's vocabulary size before padding)."""
        return max(r.stop for r in self.ranges.values())

    def summary(self) -> str:
        """One line for logs: "1688 ids (text 384, image 256 + 8 grid, audio 4 x 256)"."""
        parts = [f"text {self.text_size}"]
        if self.image_codes:
            parts.append(f"image {self.image_codes} + {self.image_max_grid} grid")
        if self.audio_codes:
            parts.append(f"audio {self.audio_levels} x {self.audio_codes}")
        return f"{self.size} ids ({', '.join(parts)})"

    def range(self, name: str) -> Range:
        if name not in self.ranges:
            raise VocabError(f"vocab: no range {name!r}; have {sorted(self.ranges)}")
        return self.ranges[name]

    def audio_range(self, level: int) -> Range:
        return self.range(f"audio{level}")

    def describe(self, token: int) -> str:
        """A human name for an id, for error messages ("<eoi>", "image id 300")."""
        if 0 <= token < len(self.specials):
            return self.specials[token]
        if self.added and token in self.ranges["added"]:
            return self.added[token - self.ranges["added"].start]
        for r in self.ranges.values():
            if token in r:
                return f"{r.name} id {token}"
        return f"id {token}"

    def special_id(self, token: str) -> int:
        if token in self.added:
            return self.ranges["added"].start + self.added.index(token)
        try:
            return self.specials.index(token)
        except ValueError:
            raise VocabError(f"vocab: unknown special token {token!r}") from None

    def grows_into(self, other: Vocab) -> bool:
        """True when ``other`` is this vocabulary plus more added specials: every id of
        this one means the same there (a model trained here can start there)."""
        n = len(self.added)
        return (
            other.added[:n] == self.added and dataclasses.replace(other, added=self.added) == self
        )

    @property
    def dtype(self) -> np.dtype:
        """Narrowest unsigned integer type that holds every id (for token shards)."""
        for dt in (np.uint8, np.uint16, np.uint32):
            if self.size - 1 <= np.iinfo(dt).max:
                return np.dtype(dt)
        return np.dtype(np.uint64)

    # ---- vectorised id -> modality -----------------------------------------------------
    def modality_table(self) -> np.ndarray:
        """``(size,)`` uint8 table: id -> modality index in :data:`MODALITIES`."""
        table = np.zeros(self.size, dtype=np.uint8)
        for name, r in self.ranges.items():
            table[r.start : r.stop] = self._modality_of_range(name)
        return table

    @staticmethod
    def _modality_of_range(name: str) -> int:
        if name in ("special", "added"):
            return SPECIAL
        if name == "text":
            return TEXT
        if name.startswith("image"):
            return IMAGE
        return AUDIO

    def modality_of(self, ids: np.ndarray) -> np.ndarray:
        """Modality index of every id (any shape); ids outside the vocabulary raise."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            bad = ids[(ids < 0) | (ids >= self.size)].flat[0]
            raise VocabError(f"vocab: id {int(bad)} outside [0, {self.size})")
        return self.modality_table()[ids]

    # ---- manifest ----------------------------------------------------------------------
    def to_manifest(self, fingerprints: dict[str, str] | None = None) -> dict:
        """A JSON-able description of the layout plus each tokenizer's fingerprint."""
        return {
            "version": MANIFEST_VERSION,
            "sizes": {
                "text_size": self.text_size,
                "image_codes": self.image_codes,
                "audio_codes": self.audio_codes,
                "audio_levels": self.audio_levels,
                "image_max_grid": self.image_max_grid,
            },
            "specials": list(self.specials),
            **({"added": list(self.added)} if self.added else {}),
            "ranges": {n: [r.start, r.size] for n, r in self.ranges.items()},
            "size": self.size,
            "fingerprints": dict(sorted((fingerprints or {}).items())),
        }

    @classmethod
    def from_manifest(cls, manifest: dict, source: str = "manifest") -> Vocab:
        """Rebuild a vocabulary and check the stored ranges against the derived ones."""
        try:
            if manifest.get("version") != MANIFEST_VERSION:
                raise VocabError(
                    f"{source}: manifest version {manifest.get('version')!r}, "
                    f"expected {MANIFEST_VERSION}"
                )
            vocab = cls(**manifest["sizes"], specials=tuple(manifest["specials"]),
                        added=tuple(manifest.get("added", ())))  # fmt: skip
            stored = {n: tuple(v) for n, v in manifest["ranges"].items()}
        except (KeyError, TypeError) as e:
            raise VocabError(f"{source}: malformed vocabulary manifest ({e!r})") from None
        derived = {n: (r.start, r.size) for n, r in vocab.ranges.items()}
        if stored != derived:
            diff = sorted(set(stored.items()) ^ set(derived.items()))
            raise VocabError(f"{source}: stored ranges disagree with the sizes: {diff}")
        _check_disjoint(list(vocab.ranges.values()), source)
        return vocab


def _check_disjoint(ranges: list[Range], source: str) -> None:
    spans = sorted((r.start, r.stop, r.name) for r in ranges if r.size)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise VocabError(f"{source}: ranges {n0} [{s0},{e0}) and {n1} [{s1},{e1}) overlap")
        if s1 > e0:
            raise VocabError(f"{source}: gap between {n0} and {n1} ([{e0},{s1}) unused)")


def check_fingerprints(manifest: dict, actual: dict[str, str], source: str = "manifest") -> None:
    """Raise if a tokenizer's fingerprint differs from the one the manifest recorded."""
    expected = manifest.get("fingerprints", {})
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want != got:
            raise VocabError(
                f"{source}: {name} tokenizer fingerprint mismatch: manifest has {want}, "
                f"the loaded tokenizer has {got}. The checkpoint/shards were built with a "
                "different tokenizer set."
            )


def manifest_digest(manifest: dict) -> str:
    """A short stable hash of a manifest (used to name and compare tokenizer sets)."""
    blob = json.dumps(manifest, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_manifest(path: str | Path) -> tuple[Vocab, dict]:
    """Read ``manifest.json`` (file or the directory holding it) -> (vocab, manifest)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise VocabError(f"{path}: no vocabulary manifest there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VocabError(f"{path}: not a valid JSON manifest ({e})") from None
    return Vocab.from_manifest(manifest, source=str(path)), manifest
